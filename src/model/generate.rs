//! The one batched generation loop: sequences stepped together, one forward pass per step over
//! every active sequence's new tokens — a prompt chunk for a sequence still reading its
//! prompt, the last chosen token for one that is generating — so the weights are read once per
//! step for the whole batch, and a finished sequence leaves while the others go on.
//!
//! `serve`'s engine worker runs it continuously (requests join and leave between steps, see
//! `serve::engine`); [`Model::continue_batch`](super::Model::continue_batch) runs a fixed
//! group to the end (the reference side of a run, benchmarks, re-execution).
//!
//! What a job gets back is a stream of [`Event`]s. The loop samples exactly what was asked
//! (greedy at temperature 0, seeded nucleus sampling otherwise), applies no penalty or bias of
//! its own, and reports log-probabilities of the model's own distribution (the log-softmax of
//! the logits, before temperature). A job whose receiver is gone is dropped at the next step.

use rand::{Rng, SeedableRng};
use tokio::sync::mpsc::UnboundedSender;

use super::{argmax, candle_message, KvCache, Model};
use crate::commit::step::{top_ids, StepData};

/// How to pick each next token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0: greedy (the first largest logit); otherwise the softmax of logits / temperature.
    pub temperature: f64,
    /// Nucleus: sample among the most likely tokens whose probabilities sum to at least this.
    pub top_p: f64,
    /// Seed of this request's random stream (same seed, same request: same tokens).
    pub seed: u64,
}

/// One request for the engine.
pub struct Job {
    /// Prompt token ids (non-empty).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Sampling.
    pub sampling: Sampling,
    /// Stop strings: generation ends before the first of them, which is not returned.
    pub stop: Vec<String>,
    /// Report log-probabilities, with this many alternatives per token (0..=20).
    pub top_logprobs: Option<usize>,
    /// Report the prompt's tokens (with log-probabilities when asked) before the output.
    pub echo: bool,
    /// Record each step's commitment data ([`StepData`]) for proof of inference.
    pub commit: bool,
    /// End at an end token (else only at `max_tokens` or a full context: benchmarks).
    pub stop_at_end: bool,
    /// Keep the logits row that chose each generated token ([`Event::Done`]'s `rows`).
    pub keep_rows: bool,
    /// Where the events go.
    pub events: UnboundedSender<Event>,
}

impl Job {
    /// A plain greedy job (no stop strings, no log-probabilities, no echo) and the receiver
    /// of its events.
    pub fn greedy(
        prompt: Vec<u32>,
        max_tokens: usize,
        commit: bool,
    ) -> (Self, tokio::sync::mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = tokio::sync::mpsc::unbounded_channel();
        let job = Self {
            prompt,
            max_tokens,
            sampling: Sampling {
                temperature: 0.0,
                top_p: 1.0,
                seed: 0,
            },
            stop: Vec::new(),
            top_logprobs: None,
            echo: false,
            commit,
            stop_at_end: true,
            keep_rows: false,
            events,
        };
        (job, rx)
    }
}

/// A token as reported: id, bytes, and (when asked) its log-probability and the most likely
/// alternatives at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenInfo {
    /// Token id.
    pub id: u32,
    /// The bytes it stands for.
    pub bytes: Vec<u8>,
    /// Its log-probability (`None` for the first prompt token, which nothing predicts).
    pub logprob: Option<f32>,
    /// The most likely tokens at its position: (id, bytes, log-probability), best first.
    pub top: Vec<(u32, Vec<u8>, f32)>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end token or a stop string.
    Stop,
    /// `max_tokens` reached, or the model's context is full.
    Length,
    /// The server is shutting down and its grace period is over.
    Cancelled,
}

/// What the worker reports for a request, in order: at most one `Prompt`, then `Token`s,
/// then exactly one `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    /// The prompt's tokens (sent when echo was asked).
    Prompt(Vec<TokenInfo>),
    /// One generated token, and the text that may now be shown (stop strings are held back
    /// until they can no longer begin in it).
    Token {
        /// The token.
        info: TokenInfo,
        /// New text.
        text: String,
    },
    /// The end.
    Done {
        /// Why.
        finish: Finish,
        /// The text not yet sent.
        text: String,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens (the end token included, as OpenAI counts).
        completion_tokens: usize,
        /// With [`Job::commit`]: every generated token (the end token included) and its
        /// step's data, in order.
        steps: Option<Committed>,
        /// Every generated token, the end token included.
        output: Vec<u32>,
        /// With [`Job::keep_rows`]: the logits row that chose each of `output`.
        rows: Option<Vec<Vec<f32>>>,
    },
    /// The forward pass failed.
    Failed(String),
}

/// What a committing job generated: its tokens and each step's data.
#[derive(Debug, Default, Clone)]
pub struct Committed {
    /// Every generated token, the end token included.
    pub output: Vec<u32>,
    /// The data of the step that chose each of them.
    pub steps: Vec<StepData>,
}

/// A job being worked on.
struct Active {
    job: Job,
    cache: KvCache,
    /// Prompt tokens read so far.
    read: usize,
    /// The sampled token not yet fed back.
    last: Option<u32>,
    generated: usize,
    text: TextState,
    rng: rand::rngs::StdRng,
    echoed: Vec<TokenInfo>,
    committed: Option<Committed>,
    output: Vec<u32>,
    rows: Option<Vec<Vec<f32>>>,
}

/// Sequences generated together: jobs join with [`Batch::admit`] and leave when done; each
/// [`Batch::step`] is one forward pass for all of them.
pub struct Batch {
    active: Vec<Active>,
    prefill_chunk: usize,
}

impl Batch {
    /// An empty batch whose prompts are read `prefill_chunk` tokens per step (a bound on one
    /// step's memory that lets generating sequences step between chunks; `usize::MAX` reads
    /// each prompt in one pass).
    pub fn new(prefill_chunk: usize) -> Self {
        Self {
            active: Vec::new(),
            prefill_chunk: prefill_chunk.max(1),
        }
    }

    /// Sequences in the batch.
    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// Whether nothing is left to do.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Add a job; it is fed from the next step.
    pub fn admit(&mut self, job: Job) {
        self.active.push(admit(job));
    }

    /// Drop the jobs whose receiver is gone, before they cost a step.
    pub fn drop_abandoned(&mut self) {
        self.active.retain(|a| !a.job.events.is_closed());
    }

    /// End every job with [`Finish::Cancelled`].
    pub fn cancel(&mut self) {
        for mut a in self.active.drain(..) {
            let ev = done(&mut a, Finish::Cancelled, String::new());
            let _ = a.job.events.send(ev);
        }
    }

    /// One forward pass over every sequence, then each one's events.
    pub fn step(&mut self, model: &Model) {
        if !self.active.is_empty() {
            step(model, &mut self.active, self.prefill_chunk);
        }
    }
}

fn admit(job: Job) -> Active {
    let rng = rand::rngs::StdRng::seed_from_u64(job.sampling.seed);
    let text = TextState::new(job.stop.clone());
    let commit = job.commit;
    let keep_rows = job.keep_rows;
    Active {
        job,
        cache: KvCache::default(),
        read: 0,
        last: None,
        generated: 0,
        text,
        rng,
        echoed: Vec::new(),
        committed: commit.then(Committed::default),
        output: Vec::new(),
        rows: keep_rows.then(Vec::new),
    }
}

fn done(a: &mut Active, finish: Finish, text: String) -> Event {
    Event::Done {
        finish,
        text,
        prompt_tokens: a.job.prompt.len(),
        completion_tokens: a.generated,
        // The committed tokens are the output: filled in once, at the end.
        steps: a.committed.take().map(|c| Committed {
            output: a.output.clone(),
            ..c
        }),
        output: std::mem::take(&mut a.output),
        rows: a.rows.take(),
    }
}

/// Send the rest of the text and the end.
fn finish(a: &mut Active, why: Finish) {
    let rest = a.text.flush();
    let ev = done(a, why, rest);
    let _ = a.job.events.send(ev);
}

/// One forward pass over every active sequence (prompts read `prefill_chunk` tokens at a
/// time), then each one's events.
fn step(model: &Model, active: &mut Vec<Active>, prefill_chunk: usize) {
    let limit = model.decoder.max_positions();
    // Each sequence's new tokens, and the first of them whose distribution is needed.
    let mut chunks: Vec<Vec<u32>> = Vec::with_capacity(active.len());
    let mut from: Vec<usize> = Vec::with_capacity(active.len());
    for a in active.iter() {
        let (chunk, f) = match a.last {
            Some(t) => (vec![t], 0),
            None => {
                let end = a.read.saturating_add(prefill_chunk).min(a.job.prompt.len());
                let chunk = a.job.prompt[a.read..end].to_vec();
                let f = if a.job.echo { 0 } else { chunk.len() - 1 };
                (chunk, f)
            }
        };
        chunks.push(chunk);
        from.push(f);
    }
    let refs: Vec<&[u32]> = chunks.iter().map(Vec::as_slice).collect();
    let mut caches: Vec<&mut KvCache> = active.iter_mut().map(|a| &mut a.cache).collect();
    let rows = model
        .decoder
        .forward_rows(&refs, &mut caches, &from)
        .and_then(|l| l.to_vec2::<f32>());
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            for a in active.drain(..) {
                let _ = a.job.events.send(Event::Failed(format!(
                    "inference failed: {}",
                    candle_message(&e)
                )));
            }
            return;
        }
    };
    let mut rows = rows.into_iter();
    let mut keep = Vec::with_capacity(active.len());
    for ((mut a, chunk), f) in active.drain(..).zip(&chunks).zip(&from) {
        let mine: Vec<Vec<f32>> = rows.by_ref().take(chunk.len() - f).collect();
        if advance(model, &mut a, chunk.len(), mine, limit) {
            keep.push(a);
        }
    }
    *active = keep;
}

/// Take one sequence's rows of this step; send its events. False once it is finished.
fn advance(model: &Model, a: &mut Active, fed: usize, rows: Vec<Vec<f32>>, limit: usize) -> bool {
    let want_lp = a.job.top_logprobs;
    let next_row = if a.last.is_none() {
        // Reading the prompt: with echo, every row predicts the prompt token after it.
        let start = a.read;
        a.read += fed;
        let reading_done = a.read == a.job.prompt.len();
        if a.job.echo {
            if start == 0 {
                a.echoed.push(info(model, a.job.prompt[0], None, want_lp));
            }
            for (i, row) in rows.iter().enumerate() {
                if let Some(&t) = a.job.prompt.get(start + i + 1) {
                    a.echoed.push(info(model, t, Some(row), want_lp));
                }
            }
            if reading_done {
                let prompt = std::mem::take(&mut a.echoed);
                if a.job.events.send(Event::Prompt(prompt)).is_err() {
                    return false;
                }
            }
        }
        if !reading_done {
            return true;
        }
        rows.into_iter().last()
    } else {
        rows.into_iter().next()
    };
    let Some(row) = next_row else {
        let _ = a.job.events.send(Event::Failed("no logits row".into()));
        return false;
    };
    if a.generated >= a.job.max_tokens {
        finish(a, Finish::Length);
        return false;
    }
    let next = sample(&row, a.job.sampling, &mut a.rng);
    a.generated += 1;
    a.output.push(next);
    if let Some(c) = a.committed.as_mut() {
        c.steps.push(StepData::from_logits(&row, next));
    }
    if a.job.stop_at_end && model.tokenizer.stop_ids.contains(&next) {
        if let Some(r) = a.rows.as_mut() {
            r.push(row);
        }
        finish(a, Finish::Stop);
        return false;
    }
    let tok = info(model, next, Some(&row), want_lp);
    if let Some(r) = a.rows.as_mut() {
        r.push(row);
    }
    let (text, stopped) = a.text.push(&tok.bytes);
    if a.job.events.send(Event::Token { info: tok, text }).is_err() {
        return false;
    }
    if stopped {
        let ev = done(a, Finish::Stop, String::new());
        let _ = a.job.events.send(ev);
        return false;
    }
    let full = a.job.prompt.len() + a.generated >= limit;
    if a.generated >= a.job.max_tokens || full {
        finish(a, Finish::Length);
        return false;
    }
    a.last = Some(next);
    true
}

/// A token's report from the row of logits that predicted it.
fn info(model: &Model, id: u32, row: Option<&[f32]>, top_n: Option<usize>) -> TokenInfo {
    let bytes = model.tokenizer.token_bytes(id);
    let (Some(row), Some(n)) = (row, top_n) else {
        return TokenInfo {
            id,
            bytes,
            logprob: None,
            top: Vec::new(),
        };
    };
    let lse = crate::score::log_sum_exp(row);
    let lp = |i: usize| (row[i] as f64 - lse) as f32;
    let top = top_ids(row, n)
        .into_iter()
        .map(|i| (i as u32, model.tokenizer.token_bytes(i as u32), lp(i)))
        .collect();
    TokenInfo {
        id,
        bytes,
        logprob: Some(lp(id as usize)),
        top,
    }
}

/// The next token: greedy at temperature 0, else a draw from the tempered softmax restricted
/// to the nucleus `top_p`.
pub fn sample(row: &[f32], s: Sampling, rng: &mut impl Rng) -> u32 {
    if s.temperature <= 0.0 {
        return argmax(row);
    }
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let w: Vec<f64> = row
        .iter()
        .map(|&v| ((v as f64 - m) / s.temperature).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let mut order: Vec<usize> = (0..row.len()).collect();
    let kept: &[usize] = if s.top_p < 1.0 {
        order.sort_by(|a, b| w[*b].total_cmp(&w[*a]).then(a.cmp(b)));
        let mut mass = 0.0;
        let mut n = 0;
        while n < order.len() && mass < s.top_p * total {
            mass += w[order[n]];
            n += 1;
        }
        &order[..n.max(1)]
    } else {
        &order
    };
    let mass: f64 = kept.iter().map(|&i| w[i]).sum();
    let mut u = rng.gen::<f64>() * mass;
    for &i in kept {
        u -= w[i];
        if u < 0.0 {
            return i as u32;
        }
    }
    *kept.last().expect("the nucleus holds a token") as u32
}

/// The text a job's output tokens show, as the engine builds it: each token's bytes, up to an
/// end token (not shown) or the first stop string (cut before it); and whether the output
/// stopped (rather than ran out of tokens). A router rebuilds the text it hands a client
/// from a checked receipt's tokens with this, so it never relays a provider's own text.
pub fn text_of_output(
    tokenizer: &crate::model::tokenizer::Tokenizer,
    output: &[u32],
    stop: &[String],
) -> (String, bool) {
    let mut t = TextState::new(stop.to_vec());
    let mut out = String::new();
    for &id in output {
        if tokenizer.stop_ids.contains(&id) {
            out.push_str(&t.flush());
            return (out, true);
        }
        let (s, stopped) = t.push(&tokenizer.token_bytes(id));
        out.push_str(&s);
        if stopped {
            return (out, true);
        }
    }
    out.push_str(&t.flush());
    (out, false)
}

/// The output text as it grows: bytes decoded as UTF-8 as soon as whole characters are in,
/// stop strings searched, and text that could still begin a stop string held back.
struct TextState {
    stop: Vec<String>,
    /// Decoded text so far.
    text: String,
    /// Bytes of an unfinished character.
    tail: Vec<u8>,
    /// Bytes of `text` already sent.
    sent: usize,
    /// Set when a stop string was found: `text` was cut before it.
    stopped: bool,
}

impl TextState {
    fn new(stop: Vec<String>) -> Self {
        Self {
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            text: String::new(),
            tail: Vec::new(),
            sent: 0,
            stopped: false,
        }
    }

    /// Add a token's bytes; the text that may be sent now, and whether a stop string ended
    /// the output.
    fn push(&mut self, bytes: &[u8]) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.tail.extend_from_slice(bytes);
        loop {
            match std::str::from_utf8(&self.tail) {
                Ok(s) => {
                    self.text.push_str(s);
                    self.tail.clear();
                    break;
                }
                Err(e) => {
                    let ok = e.valid_up_to();
                    self.text
                        .push_str(std::str::from_utf8(&self.tail[..ok]).expect("valid prefix"));
                    match e.error_len() {
                        // An invalid sequence, not an unfinished one: U+FFFD, as lossy decoding.
                        Some(bad) => {
                            self.text.push('\u{FFFD}');
                            self.tail.drain(..ok + bad);
                        }
                        None => {
                            self.tail.drain(..ok);
                            break;
                        }
                    }
                }
            }
        }
        let longest = self.stop.iter().map(String::len).max().unwrap_or(0);
        let mut search_from = self.sent.saturating_sub(longest);
        while !self.text.is_char_boundary(search_from) {
            search_from -= 1;
        }
        let hit = self
            .stop
            .iter()
            .filter_map(|s| self.text[search_from..].find(s.as_str()))
            .min();
        if let Some(at) = hit {
            self.text.truncate(search_from + at);
            self.tail.clear();
            self.stopped = true;
            let out = self.text[self.sent.min(self.text.len())..].to_string();
            self.sent = self.text.len();
            return (out, true);
        }
        // Hold back the longest end of the text that begins some stop string.
        let mut safe = self.text.len();
        for s in &self.stop {
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && self.text.ends_with(&s[..k]) {
                    safe = safe.min(self.text.len() - k);
                    break;
                }
            }
        }
        let safe = safe.max(self.sent);
        let out = self.text[self.sent..safe].to_string();
        self.sent = safe;
        (out, false)
    }

    /// Everything not yet sent (an unfinished character as U+FFFD).
    fn flush(&mut self) -> String {
        if !self.tail.is_empty() {
            self.text.push_str(&String::from_utf8_lossy(&self.tail));
            self.tail.clear();
        }
        let out = self.text[self.sent..].to_string();
        self.sent = self.text.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(stop: &[&str], pieces: &[&[u8]]) -> (String, bool) {
        let mut t = TextState::new(stop.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (s, stopped) = t.push(p);
            out.push_str(&s);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&t.flush());
        (out, false)
    }

    #[test]
    fn stop_strings_cut_the_text_even_across_tokens() {
        assert_eq!(
            stream(&["\n\n"], &[b"Hello", b"\n", b"\nWorld"]),
            ("Hello".into(), true)
        );
        assert_eq!(
            stream(&["END"], &[b"abc E", b"N", b"D tail"]),
            ("abc ".into(), true)
        );
        // A held-back prefix that turns out not to be a stop string is sent later.
        assert_eq!(
            stream(&["END"], &[b"abc E", b"x"]),
            ("abc Ex".into(), false)
        );
    }

    #[test]
    fn split_utf8_characters_are_joined_and_bad_bytes_replaced() {
        let euro = "€".as_bytes();
        assert_eq!(
            stream(&[], &[&euro[..1], &euro[1..2], &euro[2..]]),
            ("€".into(), false)
        );
        assert_eq!(stream(&[], &[b"a\xffb"]), ("a\u{FFFD}b".into(), false));
        assert_eq!(stream(&[], &[&euro[..2]]), ("\u{FFFD}".into(), false));
    }

    #[test]
    fn greedy_is_argmax_and_seeded_sampling_repeats() {
        let row = [0.1f32, 2.0, 1.9, -1.0];
        let greedy = Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(sample(&row, greedy, &mut rng), 1);
        let s = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            seed: 7,
        };
        let draw = |seed| {
            let mut r = rand::rngs::StdRng::seed_from_u64(seed);
            (0..50).map(|_| sample(&row, s, &mut r)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        // Every token is reachable at temperature 1 with no nucleus.
        let all = draw(3);
        assert!((0..4).all(|t| all.contains(&t)) || all.len() == 50);
    }

    #[test]
    fn the_nucleus_keeps_only_the_likeliest_tokens() {
        // p ≈ [0.64, 0.24, 0.09, 0.03]: top_p 0.7 keeps the first two only.
        let row = [3.0f32, 2.0, 1.0, 0.0];
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.7,
            seed: 0,
        };
        let mut r = rand::rngs::StdRng::seed_from_u64(5);
        let draws: Vec<u32> = (0..2000).map(|_| sample(&row, s, &mut r)).collect();
        assert!(draws.iter().all(|&t| t < 2));
        let ones = draws.iter().filter(|&&t| t == 1).count() as f64 / 2000.0;
        // 0.24 / (0.64 + 0.24) ≈ 0.27
        assert!((ones - 0.27).abs() < 0.04, "{ones}");
    }

    #[test]
    fn top_ids_are_sorted_and_stable_on_ties() {
        assert_eq!(top_ids(&[1.0, 3.0, 3.0, 2.0], 3), vec![1, 2, 3]);
        assert_eq!(top_ids(&[1.0], 5), vec![0]);
        assert!(top_ids(&[1.0], 0).is_empty());
    }
}
