//! A reference known only along its own greedy paths (a trusted endpoint's answers, a
//! reference pack): for each prompt, its continuation and, before each token, the top
//! alternatives it reported. Rows are given in the vocabulary's width, NaN where not reported
//! ([`crate::score::coarse_kl`] then compares on the tokens both sides reported), and empty
//! where the sequence asked about has left the path (that position is not scored).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::model::TextSide;
use crate::run::RunError;
use crate::score::ReferenceSide;

/// A prompt's token ids as a reference known by its text side reads it: raw, or through the
/// chat template.
pub fn prompt_ids(text: &TextSide, prompt: &str, chat: bool) -> Result<Vec<u32>, RunError> {
    Ok(if chat {
        text.chat_prompt(&[crate::run::user_message(prompt)])?
    } else {
        text.tokenizer.encode(prompt)?
    })
}

/// A token's log-probability, by id, as reported.
pub type SparseRow = Vec<(u32, f32)>;

/// The greedy path from one prompt.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Path {
    /// Its tokens.
    pub ids: Vec<u32>,
    /// Its text.
    pub text: String,
    /// The reported alternatives before each token.
    pub rows: Vec<SparseRow>,
}

/// Paths by prompt, and the prompts by their token ids.
pub struct KnownPaths {
    vocab: usize,
    /// The prompts handed out, by their token ids.
    prompts: HashMap<Vec<u32>, String>,
    /// The paths, by prompt ids.
    paths: HashMap<Vec<u32>, Path>,
}

impl KnownPaths {
    /// No paths yet, rows `vocab` wide.
    pub fn new(vocab: usize) -> Self {
        Self {
            vocab,
            prompts: HashMap::new(),
            paths: HashMap::new(),
        }
    }

    /// Remember a prompt by its ids.
    pub fn prompt(&mut self, ids: &[u32], prompt: &str) {
        self.prompts.insert(ids.to_vec(), prompt.to_string());
    }

    /// Whether the path from these prompt ids is known.
    pub fn has(&self, prompt_ids: &[u32]) -> bool {
        self.paths.contains_key(prompt_ids)
    }

    /// Keep a path.
    pub fn insert(&mut self, prompt_ids: Vec<u32>, path: Path) {
        self.paths.insert(prompt_ids, path);
    }

    /// A reported row as the runs read rows: the vocabulary's width, NaN where not reported.
    fn dense(&self, row: &SparseRow) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.vocab];
        for &(id, lp) in row {
            if let Some(x) = out.get_mut(id as usize) {
                *x = lp;
            }
        }
        out
    }

    /// The reference side of a prompt whose path is known.
    pub fn side(&self, prompt: &str, prompt_ids: Vec<u32>) -> Option<ReferenceSide> {
        let path = self.paths.get(&prompt_ids)?;
        let rows = path.rows.iter().map(|r| self.dense(r)).collect();
        Some(ReferenceSide::from_rows(
            prompt.to_string(),
            prompt_ids,
            path.ids.clone(),
            path.text.clone(),
            rows,
        ))
    }

    /// Each sequence's prompt (ids and text): the longest prompt handed out that it starts with
    /// and that ends by position `from`; `None` for a sequence that starts with none.
    pub fn prompts_of(&self, seqs: &[&[u32]], from: &[usize]) -> Option<Vec<(Vec<u32>, String)>> {
        seqs.iter()
            .zip(from)
            .map(|(seq, &f)| {
                self.prompts
                    .iter()
                    .filter(|(ids, _)| ids.len() <= f + 1 && seq.starts_with(ids))
                    .max_by_key(|(ids, _)| ids.len())
                    .map(|(ids, p)| (ids.clone(), p.clone()))
            })
            .collect()
    }

    /// Rows of each sequence from position `from[i]` on, along the known path of its prompt
    /// (`prompts[i]`, from [`KnownPaths::prompts_of`]): row `r` of a path is the reference's
    /// before its token `r`, after the prompt and its own tokens `0..r`, and holds where the
    /// sequence is that path; elsewhere the row is empty.
    pub fn rows(
        &self,
        seqs: &[&[u32]],
        from: &[usize],
        prompts: &[(Vec<u32>, String)],
    ) -> Vec<Vec<Vec<f32>>> {
        seqs.iter()
            .zip(from)
            .zip(prompts)
            .map(|((seq, &f), (ids, _))| {
                let plen = ids.len();
                let path = self.paths.get(ids);
                (f..seq.len())
                    .map(|p| match (path, (p + 1).checked_sub(plen)) {
                        (Some(path), Some(r))
                            if r < path.rows.len() && path.ids.get(..r) == Some(&seq[plen..=p]) =>
                        {
                            self.dense(&path.rows[r])
                        }
                        _ => Vec::new(),
                    })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_hold_along_the_path_and_at_the_first_token_off_it() {
        let mut k = KnownPaths::new(8);
        k.prompt(&[1, 2], "p");
        k.insert(
            vec![1, 2],
            Path {
                ids: vec![5, 6, 7],
                text: String::new(),
                rows: vec![vec![(5, -0.1)], vec![(6, -0.2)], vec![(7, -0.3)]],
            },
        );
        // The sequence follows the path for one token, then leaves it.
        let seq: &[u32] = &[1, 2, 5, 3, 7];
        let prompts = k.prompts_of(&[seq], &[1]).unwrap();
        let rows = &k.rows(&[seq], &[1], &prompts)[0];
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0][5], -0.1, "before token 0: known");
        assert!(rows[0][4].is_nan(), "not reported: NaN");
        assert_eq!(rows[1][6], -0.2, "after the path's own token: known");
        assert!(
            rows[2].is_empty() && rows[3].is_empty(),
            "off the path: unknown"
        );
        assert!(k.prompts_of(&[&[9, 9]], &[1]).is_none());
    }
}
