//! SentencePiece BPE as GGUF stores it (`tokenizer.ggml.model = "llama"`): pieces with scores
//! and token types, no merges. Encoding follows llama.cpp's `llm_tokenizer_spm`, which is
//! SentencePiece's BPE: spaces become `▁`, a `▁` is prefixed to each text fragment, then
//! adjacent symbols merge greedily by the score of the piece they form (ties: leftmost first),
//! and any symbol that is not a piece is spelled with byte pieces `<0xNN>`.
//! `tests/fixtures/spm-bpe.json` holds the SentencePiece library's own encodings as yardstick.

use std::collections::{BinaryHeap, HashMap};

/// GGUF token types (llama.cpp `llama_token_type`).
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;
const TYPE_BYTE: i64 = 6;

/// A SentencePiece BPE vocabulary.
pub struct Spm {
    pieces: Vec<String>,
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
    /// Byte value → id of its `<0xNN>` piece.
    bytes: [Option<u32>; 256],
    /// Id of a byte piece → its byte.
    byte_of: HashMap<u32, u8>,
    unk: Option<u32>,
    /// Control and user-defined pieces that the text may contain verbatim, longest first.
    specials: Vec<(String, u32)>,
    add_space_prefix: bool,
}

/// A merge candidate: symbols `left` and `right` form a piece of this score and byte length.
#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Max-heap on score; on equal scores the leftmost pair first.
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// A symbol of the working string: a byte range, linked to its neighbours.
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    /// From GGUF's pieces, scores and token types.
    pub fn new(pieces: &[String], scores: &[f32], types: &[i64], add_space_prefix: bool) -> Self {
        let mut bytes = [None; 256];
        let mut byte_of = HashMap::new();
        let mut specials = Vec::new();
        let mut unk = None;
        for (i, (p, &t)) in pieces.iter().zip(types).enumerate() {
            let id = i as u32;
            match t {
                TYPE_BYTE => {
                    if let Some(b) = p
                        .strip_prefix("<0x")
                        .and_then(|h| h.strip_suffix('>'))
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        bytes[b as usize] = Some(id);
                        byte_of.insert(id, b);
                    }
                }
                TYPE_CONTROL | TYPE_USER_DEFINED if !p.is_empty() => specials.push((p.clone(), id)),
                TYPE_UNKNOWN => unk = unk.or(Some(id)),
                _ => {}
            }
        }
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        // Only normal and user-defined pieces take part in merges (llama.cpp looks every
        // piece up by text; control and byte pieces never match merged text in practice).
        let ids = pieces
            .iter()
            .enumerate()
            .rev()
            .map(|(i, p)| (p.clone(), i as u32))
            .collect();
        let mut scores = scores.to_vec();
        scores.resize(pieces.len(), 0.0);
        Self {
            pieces: pieces.to_vec(),
            ids,
            scores,
            bytes,
            byte_of,
            unk,
            specials,
            add_space_prefix,
        }
    }

    /// Token ids of `text` (no BOS; the caller adds it).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut prev_special = true;
        let mut rest = text;
        while !rest.is_empty() {
            // The earliest special piece in the rest of the text (longest on a tie).
            let hit = self
                .specials
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, s.len(), *id)))
                .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            let (raw, special) = match hit {
                Some((at, len, id)) => (&rest[..at], Some((len, id, at))),
                None => (rest, None),
            };
            if !raw.is_empty() {
                self.encode_fragment(raw, prev_special, &mut out);
            }
            match special {
                Some((len, id, at)) => {
                    out.push(id);
                    prev_special = true;
                    rest = &rest[at + len..];
                }
                None => break,
            }
        }
        out
    }

    fn encode_fragment(&self, raw: &str, prefix: bool, out: &mut Vec<u32>) {
        let mut text = String::with_capacity(raw.len() + 3);
        if self.add_space_prefix && prefix {
            text.push(' ');
        }
        text.push_str(raw);
        let text = text.replace(' ', "\u{2581}");
        let mut symbols: Vec<Symbol> = Vec::new();
        for (i, (start, c)) in text.char_indices().enumerate() {
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if i > 0 {
                symbols[i - 1].next = Some(i);
            }
        }
        let mut queue = BinaryHeap::new();
        let mut rev_merge: HashMap<String, (usize, usize)> = HashMap::new();
        let try_add = |l: Option<usize>,
                       r: Option<usize>,
                       symbols: &[Symbol],
                       queue: &mut BinaryHeap<Bigram>,
                       rev: &mut HashMap<String, (usize, usize)>| {
            let (Some(l), Some(r)) = (l, r) else {
                return;
            };
            let (a, b) = (&symbols[l], &symbols[r]);
            let piece = &text[a.start..a.start + a.len + b.len];
            if let Some(&id) = self.ids.get(piece) {
                queue.push(Bigram {
                    score: self.scores[id as usize],
                    left: l,
                    right: r,
                    size: piece.len(),
                });
                rev.insert(piece.to_string(), (l, r));
            }
        };
        for i in 1..symbols.len() {
            try_add(Some(i - 1), Some(i), &symbols, &mut queue, &mut rev_merge);
        }
        while let Some(bg) = queue.pop() {
            let (l, r) = (bg.left, bg.right);
            if symbols[l].len == 0
                || symbols[r].len == 0
                || symbols[l].len + symbols[r].len != bg.size
            {
                continue; // stale: one side merged since
            }
            symbols[l].len += symbols[r].len;
            symbols[r].len = 0;
            symbols[l].next = symbols[r].next;
            if let Some(n) = symbols[r].next {
                symbols[n].prev = Some(l);
            }
            let (p, n) = (symbols[l].prev, symbols[l].next);
            try_add(p, Some(l), &symbols, &mut queue, &mut rev_merge);
            try_add(Some(l), n, &symbols, &mut queue, &mut rev_merge);
        }
        let mut i = if symbols.is_empty() { None } else { Some(0) };
        while let Some(s) = i {
            let sym = &symbols[s];
            self.resegment(
                &text,
                &text[sym.start..sym.start + sym.len],
                &symbols,
                &rev_merge,
                out,
            );
            i = sym.next;
        }
    }

    /// Emit a final symbol: its piece, else the two symbols it was merged from, else bytes.
    fn resegment(
        &self,
        text: &str,
        piece: &str,
        symbols: &[Symbol],
        rev: &HashMap<String, (usize, usize)>,
        out: &mut Vec<u32>,
    ) {
        if let Some(&id) = self.ids.get(piece) {
            out.push(id);
            return;
        }
        if let Some(&(l, r)) = rev.get(piece) {
            let (a, b) = (&symbols[l], &symbols[r]);
            // The merged symbols' original extents: left ends where right starts.
            let left = &text[a.start..b.start];
            let right = &text[b.start..a.start + piece.len()];
            self.resegment(text, left, symbols, rev, out);
            self.resegment(text, right, symbols, rev, out);
            return;
        }
        for b in piece.bytes() {
            match (self.bytes[b as usize], self.unk) {
                (Some(id), _) | (None, Some(id)) => out.push(id),
                (None, None) => {}
            }
        }
    }

    /// Text of `ids`: `▁` back to spaces, byte pieces joined into UTF-8 (lossily).
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.bytes(ids)).into_owned()
    }

    /// The bytes `ids` stand for: `▁` as a space, a byte piece as its byte.
    pub fn bytes(&self, ids: &[u32]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for id in ids {
            if let Some(b) = self.byte_of.get(id) {
                bytes.push(*b);
            } else if let Some(p) = self.pieces.get(*id as usize) {
                bytes.extend_from_slice(p.replace('\u{2581}', " ").as_bytes());
            }
        }
        bytes
    }

    /// The piece of `id`.
    pub fn piece(&self, id: u32) -> Option<String> {
        self.pieces.get(id as usize).cloned()
    }

    /// Number of pieces.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The SentencePiece library's encodings (tests/fixtures/make_spm_fixture.py).
    #[test]
    fn encodes_as_the_sentencepiece_library_does() {
        let fx: Value = serde_json::from_str(include_str!("../../tests/fixtures/spm-bpe.json"))
            .expect("fixture");
        let (mut pieces, mut scores, mut types) = (Vec::new(), Vec::new(), Vec::new());
        for p in fx["pieces"].as_array().expect("pieces") {
            pieces.push(p[0].as_str().expect("piece").to_string());
            scores.push(p[1].as_f64().expect("score") as f32);
            types.push(p[2].as_i64().expect("type"));
        }
        let spm = Spm::new(&pieces, &scores, &types, true);
        let mut checked = 0;
        for case in fx["cases"].as_array().expect("cases") {
            let text = case["text"].as_str().expect("text");
            let want: Vec<u32> = case["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_u64().expect("id") as u32)
                .collect();
            let got = spm.encode(text);
            assert_eq!(got, want, "{text:?}");
            if !text.is_empty() {
                assert_eq!(spm.decode(&got), format!(" {text}"), "{text:?}");
            }
            checked += 1;
        }
        assert!(checked >= 10);
        // Control pieces in the text are kept whole, and the next fragment gets a prefix.
        let s = spm.encode("a</s>b");
        assert!(s.contains(&2), "{s:?}");
    }
}
