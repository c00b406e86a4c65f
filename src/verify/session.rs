//! A router's session against one provider: fresh secret challenges as the jobs (the provider
//! cannot have prepared for them), every job audited, and the tally.

use serde::Serialize;

use super::{JobReport, Provider, Verifier, VerifyError};
use crate::challenge::{Catalog, ChallengeError, ChallengeKey};
use crate::commit::receipt::JobRequest;

/// What a session has seen so far.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Tally {
    /// Jobs run.
    pub jobs: usize,
    /// Jobs whose audit passed.
    pub accepted: usize,
    /// Jobs rejected.
    pub rejected: usize,
    /// Output tokens over all jobs.
    pub tokens: u64,
    /// Seconds waiting for the provider.
    pub generate_s: f64,
    /// Seconds checking.
    pub audit_s: f64,
}

/// A session: a fresh key and run id, the challenge catalog, and the tally.
pub struct Session {
    key: ChallengeKey,
    run_id: String,
    catalog: Catalog,
    max_tokens: u32,
    tally: Tally,
}

impl Session {
    /// A session whose jobs ask for up to `max_tokens` tokens each.
    pub fn new(max_tokens: u32) -> Result<Self, ChallengeError> {
        let run_id = crate::run::files::new_run_id();
        Ok(Self {
            key: ChallengeKey::generate().for_run(&run_id),
            run_id,
            catalog: Catalog::load()?,
            max_tokens,
            tally: Tally::default(),
        })
    }

    /// Run the next job through `provider` and audit it with `v`: the next challenge, through
    /// the claimed model's chat template when it ships one, greedy.
    pub fn job(
        &mut self,
        v: &mut Verifier,
        provider: &mut dyn Provider,
    ) -> Result<JobReport, VerifyError> {
        let c = self
            .catalog
            .challenge(&self.key, &self.run_id, self.tally.jobs as u64);
        let model = v.model.as_ref().ok_or(VerifyError::CannotReexecute)?;
        let prompt = match model.chat_template {
            Some(_) => model.chat_prompt(&[crate::run::user_message(&c.prompt)])?,
            None => model.tokenizer.encode(&c.prompt)?,
        };
        let request = JobRequest {
            prompt,
            max_tokens: self.max_tokens,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
        };
        let r = v.job(provider, &request)?;
        let t = &mut self.tally;
        t.jobs += 1;
        if r.accepted() {
            t.accepted += 1;
        } else {
            t.rejected += 1;
        }
        t.tokens += u64::from(r.steps);
        t.generate_s += r.generate_s;
        t.audit_s += r.audit_s;
        Ok(r)
    }

    /// The tally so far.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }
}
