//! A local model file as either side of a run.
//!
//! As a [`Reference`] it continues prompts greedily and gives its distributions; as a
//! [`Candidate`] it is teacher-forced on the reference's continuations and scored by KL on a
//! shared tokenizer, or by bits per byte across tokenizers ([`crate::score::kind_for`]). The
//! model is loaded when first needed and dropped by [`Reference::release`] /
//! [`Candidate::release`] (a run that holds one model at a time).

use std::path::PathBuf;

use super::{Candidate, Reference, RunError, Scored};
use crate::challenge::Challenge;
use crate::identity::{fingerprint, Identity};
use crate::model::tokenizer::Tokenizer;
use crate::model::{resolve, LoadOptions, Model, ModelError};
use crate::score::{self, ReferenceSide, ScoreKind};
use crate::transcript;

/// A model file, its identity, and the model when loaded.
pub struct LocalModel {
    path: PathBuf,
    opts: LoadOptions,
    identity: Identity,
    model: Option<Model>,
}

impl LocalModel {
    /// The model a spec names, identified; loaded now when `load`, else when first needed.
    /// The file is hashed on a second thread while this one loads the model (both are
    /// single-threaded work on the same file).
    pub fn open(spec: &str, opts: LoadOptions, load: bool) -> Result<Self, ModelError> {
        Ok(Self::open_all(&[spec], opts, load)?.remove(0))
    }

    /// Several models, identified and (when `load`) loaded: all the hashing on a second
    /// thread while this one loads them in turn. Nothing is written, so a model that fails
    /// to load leaves no file behind.
    pub fn open_all(
        specs: &[&str],
        opts: LoadOptions,
        load: bool,
    ) -> Result<Vec<Self>, ModelError> {
        let paths = specs
            .iter()
            .map(|s| resolve(s))
            .collect::<Result<Vec<_>, _>>()?;
        let (identities, models) = std::thread::scope(|scope| {
            let hashing = scope.spawn(|| {
                paths
                    .iter()
                    .map(|p| fingerprint(p, false))
                    .collect::<Result<Vec<_>, _>>()
            });
            let models = paths
                .iter()
                .map(|p| {
                    load.then(|| Model::load(&p.display().to_string(), opts))
                        .transpose()
                })
                .collect::<Result<Vec<_>, _>>();
            let identities = hashing.join().expect("the hashing thread does not panic");
            (identities, models)
        });
        let (identities, models) = (identities?, models?);
        Ok(paths
            .into_iter()
            .zip(identities)
            .zip(models)
            .map(|((path, identity), model)| Self {
                path,
                opts,
                identity,
                model,
            })
            .collect())
    }

    /// The model, loaded if it is not.
    pub fn model(&mut self) -> Result<&Model, ModelError> {
        if self.model.is_none() {
            self.model = Some(Model::load(&self.path.display().to_string(), self.opts)?);
        }
        Ok(self.model.as_ref().expect("just loaded"))
    }
}

impl Reference for LocalModel {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn tokenizer(&mut self) -> Result<&Tokenizer, RunError> {
        Ok(&self.model()?.tokenizer)
    }

    fn prompt_ids(&mut self, prompt: &str, chat: bool) -> Result<Vec<u32>, RunError> {
        let m = self.model()?;
        Ok(if chat {
            m.chat_prompt(&[super::user_message(prompt)])?
        } else {
            m.tokenizer.encode(prompt)?
        })
    }

    fn continue_group(
        &mut self,
        prompts: &[String],
        k: usize,
        kind: ScoreKind,
    ) -> Result<Vec<ReferenceSide>, RunError> {
        Ok(score::reference_pass(self.model()?, prompts, k, kind)?)
    }

    fn distributions(
        &mut self,
        seqs: &[&[u32]],
        from: &[usize],
    ) -> Result<Vec<Vec<Vec<f32>>>, RunError> {
        Ok(self.model()?.logprobs_batch(seqs, from)?)
    }

    fn release(&mut self) {
        self.model = None;
    }
}

impl Candidate for LocalModel {
    fn describe(&self) -> transcript::Candidate {
        transcript::Candidate::Model(self.identity.clone())
    }

    fn is(&self, recorded: &transcript::Candidate) -> bool {
        matches!(recorded, transcript::Candidate::Model(c) if c.weight_hash == self.identity.weight_hash)
    }

    fn score_kind(&self, reference: &Identity) -> ScoreKind {
        score::kind_for(reference, &self.identity)
    }

    fn continuations(&self, kind: ScoreKind) -> Option<ScoreKind> {
        Some(kind)
    }

    fn score_group(
        &mut self,
        _reference: &mut dyn Reference,
        _challenges: &[Challenge],
        sides: Option<Vec<ReferenceSide>>,
    ) -> Result<Vec<Scored>, RunError> {
        let sides = sides.expect("a local candidate asks for the reference's continuations");
        let scores = score::candidate_pass(self.model()?, &sides)?;
        Ok(sides
            .into_iter()
            .zip(scores)
            .map(|(side, score)| Scored {
                score,
                continuation_ids: side.continuation_ids,
                continuation_text: side.continuation_text,
                exchange: None,
            })
            .collect())
    }

    fn release(&mut self) {
        self.model = None;
    }
}
