//! `pot monitor`: watch an endpoint over time, and raise an alert when it stops serving the
//! reference (a silent swap halfway is the case to catch).
//!
//! Every `--every`, a round puts whole cycles of fresh keyed challenges to the endpoint, scored
//! as `pot audit` scores them (the same probe, methods, reference sides and margins), and feeds
//! the scores to a change detector ([`crate::stats::detector`]): an e-detector whose average
//! run length to a false alert is at least `--arl` cycles while the endpoint serves the
//! reference, and which catches a swap within a few cycles however long the honest stretch
//! before it. Each round is committed to an embedded store (redb) with the detector's state in
//! one transaction: a killed watch resumes from its last finished round, and an alert stands
//! until a new watch is begun in another folder.
//!
//! Rounds are skipped (and said to be) while the endpoint's reported tokens over the last 24
//! hours would pass `--budget-tokens-per-day`.

pub mod store;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::audit::{AuditConfig, EndpointCandidate, OpenedReference};
use crate::challenge::{Catalog, ChallengeKey};
use crate::run::files::{new_run_id, write_new_secret};
use crate::run::{Candidate, RunError};
use crate::stats::detector::Detector;
use crate::stats::CYCLE;
use crate::transcript::unix_now;
use store::{Alert, Round, RoundScore, State, Store, StoreError, Watch};

/// What a watch needs.
pub struct MonitorConfig {
    /// The audit each round is a slice of (its key and run id are the watch's own).
    pub audit: AuditConfig,
    /// The folder of the watch's store and key.
    pub state: PathBuf,
    /// Time from one round's start to the next.
    pub every: Duration,
    /// Cycles of challenges per round.
    pub cycles_per_round: usize,
    /// Skip rounds while the last 24 hours' tokens would pass this.
    pub budget_tokens_per_day: Option<u64>,
    /// Average run length to a false alert, in cycles.
    pub arl: f64,
    /// Stop (without an alert) after this many rounds in this session.
    pub rounds: Option<u64>,
    /// POST each alert (JSON) here.
    pub webhook: Option<String>,
}

/// What a watch reports as it goes.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// The watch (re)started.
    Started {
        /// The store.
        store: String,
        /// Rounds already in it.
        rounds: u64,
        /// How challenges are put to the endpoint.
        method: String,
        /// The margin and threshold.
        gamma: f64,
        /// Clip bound.
        clip: f64,
        /// Average run length to a false alert, in cycles.
        arl: f64,
    },
    /// A round finished.
    Round {
        /// Round number.
        round: u64,
        /// Challenge indices scored.
        first: u64,
        /// Count.
        challenges: usize,
        /// Mean clipped score of the round.
        mean: f64,
        /// log10 of the detector's statistic.
        log10_statistic: f64,
        /// log10 of the alert threshold.
        log10_threshold: f64,
        /// Tokens the endpoint reported.
        tokens: u64,
        /// Seconds the round took.
        seconds: f64,
    },
    /// A round was skipped.
    Skipped {
        /// Why.
        reason: String,
    },
    /// The webhook could not be reached.
    Webhook {
        /// What went wrong.
        error: String,
    },
}

/// How a watch session ended.
#[derive(Clone, Debug, Serialize)]
pub struct Ended {
    /// The alert, when one was raised (now or before).
    pub alert: Option<Alert>,
    /// Rounds in the store.
    pub rounds: u64,
    /// Rounds this session.
    pub session_rounds: u64,
}

/// What can go wrong in a watch.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The audit side (reference, endpoint, challenges).
    #[error(transparent)]
    Run(#[from] RunError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A store made for another watch.
    #[error("{path}: this folder watches {what}; pass the flags it was begun with, or another --state folder for a new watch")]
    Mismatch {
        /// The store.
        path: String,
        /// What differs.
        what: String,
    },
    /// The state folder.
    #[error("{path}: cannot create the watch's folder ({source}); check the path and permissions")]
    Folder {
        /// The folder.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The test parameters.
    #[error(transparent)]
    Params(#[from] crate::stats::ParamError),
}

impl From<crate::run::files::FilesError> for MonitorError {
    fn from(e: crate::run::files::FilesError) -> Self {
        MonitorError::Run(e.into())
    }
}

impl From<crate::challenge::ChallengeError> for MonitorError {
    fn from(e: crate::challenge::ChallengeError) -> Self {
        MonitorError::Run(e.into())
    }
}

/// Watch until an alert, or `cfg.rounds` rounds; `on` hears every event.
pub fn watch(mut cfg: MonitorConfig, on: &mut dyn FnMut(&Event)) -> Result<Ended, MonitorError> {
    std::fs::create_dir_all(&cfg.state).map_err(|source| MonitorError::Folder {
        path: cfg.state.display().to_string(),
        source,
    })?;
    let store_path = cfg.state.join("watch.redb");
    let key_path = cfg.state.join("watch.key");
    let store = Store::open(&store_path)?;
    let mismatch = |what: String| MonitorError::Mismatch {
        path: store_path.display().to_string(),
        what,
    };
    let existing = store.watch()?;
    if let (
        Some(_),
        Some(State {
            alert: Some(a),
            rounds,
            ..
        }),
    ) = (&existing, store.state()?)
    {
        return Ok(Ended {
            alert: Some(a),
            rounds,
            session_rounds: 0,
        });
    }
    let run_id = match &existing {
        Some(w) => w.run_id.clone(),
        None => format!("watch-{}", new_run_id()),
    };
    let root = if key_path.exists() {
        ChallengeKey::read(&key_path)?
    } else if existing.is_some() {
        return Err(mismatch(format!(
            "with a key that is gone ({} is missing)",
            key_path.display()
        )));
    } else {
        let k = ChallengeKey::generate();
        write_new_secret(&key_path, &k.to_hex())?;
        k
    };
    cfg.audit.run.key = root.for_run(&run_id);
    cfg.audit.run.run_id = run_id.clone();

    let mut reference = OpenedReference::open(&cfg.audit)?;
    let mut candidate = EndpointCandidate::connect(&cfg.audit, reference.as_reference())?;
    let identity = reference.as_reference().identity().clone();
    let kind = candidate.score_kind(&identity);
    if kind == crate::score::ScoreKind::SampledText {
        return Err(RunError::Unsupported {
            url: cfg.audit.endpoint.url.clone(),
            what: "the endpoint answers with text only, and sampled text is tested for uniformity, which gives no score for the detector to watch; watch it at temperature 0, or an endpoint with log-probabilities".into(),
        }
        .into());
    }
    let calibration = cfg.audit.run.calibration_for(&identity)?;
    let params = cfg.audit.run.params(kind, calibration.as_ref())?;
    let info = candidate.info().clone();
    let watch = Watch {
        format: store::FORMAT,
        run_id,
        key_commitment: cfg.audit.run.key.commitment(),
        url: info.url.clone(),
        model: info.model.clone(),
        api: info.api.clone(),
        reference: identity.clone(),
        score_kind: kind,
        k: cfg.audit.run.k,
        cycles_per_round: cfg.cycles_per_round,
        created: unix_now(),
    };
    let mut state = match (existing, store.state()?) {
        (Some(w), Some(state)) => {
            let differs = [
                (
                    "another endpoint",
                    w.url != watch.url || w.model != watch.model || w.api != watch.api,
                ),
                (
                    "another reference",
                    w.reference.weight_hash != identity.weight_hash,
                ),
                (
                    "with another challenge key",
                    w.key_commitment != watch.key_commitment,
                ),
                (
                    "challenges scored another way (the endpoint now answers another method)",
                    w.score_kind != kind,
                ),
                ("with another K", w.k != watch.k),
                (
                    "with other margins",
                    state.detector.gamma != params.gamma || state.detector.clip != params.clip,
                ),
                ("with another --arl", state.detector.arl != cfg.arl),
            ];
            if let Some((what, _)) = differs.iter().find(|(_, d)| *d) {
                return Err(mismatch(format!(
                    "{} model {:?}, and this run asks for {what}",
                    w.url, w.model
                )));
            }
            state
        }
        _ => {
            let state = State {
                next_index: 0,
                rounds: 0,
                detector: Detector::new(params.gamma, params.clip, cfg.arl)?,
                alert: None,
            };
            store.begin(&watch, &state)?;
            state
        }
    };
    on(&Event::Started {
        store: store_path.display().to_string(),
        rounds: state.rounds,
        method: info.method.clone(),
        gamma: params.gamma,
        clip: params.clip,
        arl: cfg.arl,
    });

    let catalog = Catalog::load()?;
    let side_kind = candidate.continuations(kind);
    let per_round = (cfg.cycles_per_round.max(1) * CYCLE) as u64;
    let mut session_rounds = 0;
    let mut last_tokens = 0;
    loop {
        if cfg.rounds.is_some_and(|n| session_rounds >= n) {
            return Ok(Ended {
                alert: None,
                rounds: state.rounds,
                session_rounds,
            });
        }
        let began = Instant::now();
        let started = unix_now();
        let over_budget = match cfg.budget_tokens_per_day {
            Some(budget) => {
                let used = store.tokens_since(started.saturating_sub(86_400))?;
                (used + last_tokens > budget).then(|| {
                    format!("the endpoint reported {used} tokens in the last 24 hours, and a round takes about {last_tokens} (--budget-tokens-per-day {budget})")
                })
            }
            None => None,
        };
        if let Some(reason) = over_budget {
            on(&Event::Skipped { reason });
        } else {
            // A round starts where the last finished one ended, at a cycle boundary.
            let first = state.next_index;
            let chs: Vec<_> = (first..first + per_round)
                .map(|i| catalog.challenge(&cfg.audit.run.key, &cfg.audit.run.run_id, i))
                .collect();
            let sides = match side_kind {
                Some(k) => {
                    let prompts: Vec<String> = chs.iter().map(|c| c.prompt.clone()).collect();
                    Some(
                        reference
                            .as_reference()
                            .continue_group(&prompts, cfg.audit.run.k, k)?,
                    )
                }
                None => None,
            };
            let (tokens_before, _) = candidate.usage();
            let scored = candidate.score_group(reference.as_reference(), &chs, sides)?;
            let tokens = candidate.usage().0 - tokens_before;
            last_tokens = tokens;
            let mut alert = false;
            let mut scores = Vec::with_capacity(scored.len());
            for (ch, s) in chs.iter().zip(scored) {
                alert |= state.detector.push(s.score.score);
                scores.push(RoundScore {
                    index: ch.index,
                    family: ch.family.clone(),
                    score: s.score.score,
                    note: s.score.note,
                    exchange: s.exchange,
                });
            }
            let round = Round {
                round: state.rounds,
                started,
                seconds: began.elapsed().as_secs_f64(),
                tokens,
                log10_statistic: state.detector.log10_statistic(),
                alert,
                scores,
            };
            state.next_index = first + per_round;
            state.rounds += 1;
            if alert {
                state.alert = Some(Alert {
                    event: "alert".into(),
                    url: watch.url.clone(),
                    model: watch.model.clone(),
                    round: round.round,
                    at: unix_now(),
                    challenges: state.next_index,
                    log10_statistic: round.log10_statistic,
                    log10_threshold: cfg.arl.log10(),
                    message: format!(
                        "{} model {:?} no longer serves {}: its scores since some round are above γ = {} (an alert this early has average run length at least {} cycles when it does serve it)",
                        watch.url, watch.model, identity.path, params.gamma, cfg.arl
                    ),
                });
            }
            store.finish_round(&round, &state)?;
            session_rounds += 1;
            let clipped: Vec<f64> = round
                .scores
                .iter()
                .map(|s| s.score.clamp(0.0, params.clip))
                .collect();
            on(&Event::Round {
                round: round.round,
                first,
                challenges: clipped.len(),
                mean: clipped.iter().sum::<f64>() / clipped.len().max(1) as f64,
                log10_statistic: round.log10_statistic,
                log10_threshold: cfg.arl.log10(),
                tokens,
                seconds: round.seconds,
            });
            if let Some(a) = &state.alert {
                if let Some(url) = &cfg.webhook {
                    if let Err(error) = post_alert(url, a) {
                        on(&Event::Webhook { error });
                    }
                }
                return Ok(Ended {
                    alert: Some(a.clone()),
                    rounds: state.rounds,
                    session_rounds,
                });
            }
        }
        if cfg.rounds.is_some_and(|n| session_rounds >= n) {
            continue;
        }
        if let Some(rest) = cfg.every.checked_sub(began.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// POST an alert as JSON; the error in one line.
fn post_alert(url: &str, alert: &Alert) -> Result<(), String> {
    let r = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .and_then(|c| c.post(url).json(alert).send())
        .map_err(|e| format!("{url}: {}", crate::with_causes(&e)))?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url}: HTTP {}", r.status()))
    }
}
