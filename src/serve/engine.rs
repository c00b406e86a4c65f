//! The engine worker: one thread owns the model and runs every admitted request together.
//!
//! Requests wait in a bounded queue (the HTTP layer answers 429 when it is full). The worker
//! admits up to `max_batch` of them into the one batched generation loop
//! ([`crate::model::generate`]) and steps them in lockstep (continuous batching): a finished
//! request leaves and a queued one takes its place at the next step. What a request gets back
//! is a stream of [`Event`]s; a request whose client disconnected is dropped at the next step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use crate::model::generate::Batch;
pub use crate::model::generate::{Committed, Event, Finish, Job, Sampling, TokenInfo};
use crate::model::Model;

/// Prompt tokens a sequence reads per step: bounds the memory of one step (echoed prompts
/// keep every row's distribution) and lets generating sequences step between chunks.
const PREFILL_CHUNK: usize = 256;

/// Spawn the worker. It runs until every sender of `queue` is gone and its work is done, or
/// until `cancel` is set, when it ends every request it holds or that waits with
/// [`Finish::Cancelled`].
pub fn spawn(
    model: Arc<Model>,
    queue: Receiver<Job>,
    max_batch: usize,
    cancel: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("pot-engine".into())
        .spawn(move || run(&model, &queue, max_batch.max(1), &cancel))
        .expect("the engine thread starts")
}

fn run(model: &Model, queue: &Receiver<Job>, max_batch: usize, cancel: &AtomicBool) {
    let mut active = Batch::new(PREFILL_CHUNK);
    loop {
        if cancel.load(Ordering::SeqCst) {
            active.cancel();
            while let Ok(job) = queue.try_recv() {
                cancel_waiting(&job);
            }
            // Wait for the senders to go (the server is closing), cancelling late arrivals.
            match queue.recv_timeout(std::time::Duration::from_millis(50)) {
                Ok(job) => {
                    cancel_waiting(&job);
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        // Admit: block for work when idle (waking to check for cancellation), top up otherwise.
        if active.is_empty() {
            match queue.recv_timeout(std::time::Duration::from_millis(100)) {
                Ok(job) => active.admit(job),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        while active.len() < max_batch {
            match queue.try_recv() {
                Ok(job) => active.admit(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        // Requests whose client has gone are dropped before they cost a step.
        active.drop_abandoned();
        if active.is_empty() {
            continue;
        }
        active.step(model);
    }
}

/// End a job that never started: nothing generated, nothing committed.
fn cancel_waiting(job: &Job) {
    let _ = job.events.send(Event::Done {
        finish: Finish::Cancelled,
        text: String::new(),
        prompt_tokens: job.prompt.len(),
        completion_tokens: 0,
        steps: None,
        output: Vec::new(),
        rows: None,
    });
}
