//! What the command line prints: verdicts in words, exit codes, progress bars, and writes to
//! standard output that end quietly when the reader goes away.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Result;

use pot::stats::Decision;

/// `println!` that returns the write's error instead of panicking on it: a reader that closes
/// standard output early (`pot challenges -n 100000 | head`) ends the command successfully
/// (see [`StdoutClosed`]).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::cli::print::stdout_error)
    }};
}

/// `print!`'s twin of [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*).map_err($crate::cli::print::stdout_error)
    }};
}

/// Standard output's reader went away (a closed pipe): the command stops writing, and `main`
/// exits 0 as ripgrep does, since the reader has all it asked for.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

pub(crate) fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(e).context("writing to standard output")
    }
}

/// The run's JSON with the bundle's, when one was made.
pub(crate) fn with_bundle<T: serde::Serialize>(
    out: &T,
    made: Option<&pot::evidence::Created>,
) -> Result<String> {
    let mut v = serde_json::to_value(out)?;
    if let (Some(m), Some(o)) = (made, v.as_object_mut()) {
        o.insert("bundle".into(), serde_json::to_value(m)?);
    }
    Ok(serde_json::to_string_pretty(&v)?)
}

pub(crate) fn print_bundle(made: Option<&pot::evidence::Created>) -> Result<()> {
    if let Some(m) = made {
        outln!(
            "  bundle {} ({} B, signed by {}; check it with `pot bundle verify {} --pubkey {}`)",
            m.path,
            m.bytes,
            &m.signer[..16],
            m.path,
            m.signer
        )?;
        if let Some(p) = &m.proof {
            outln!(
                "  proof  {} after {} and its bounds proven from the committed scores ({} B, {:.1} s)",
                p.decision.as_str(),
                p.queries,
                p.proof_bytes,
                p.prove_s
            )?;
        }
    }
    Ok(())
}

/// The verdict, the evidence and what it means, in words.
pub(crate) fn print_summary(s: &pot::run::Summary, how: Option<&str>) -> Result<()> {
    let p = s.params;
    let (near, far) = (&s.served.near, &s.served.far);
    outln!("{}", s.decision.as_str())?;
    outln!(
        "  {} challenges{}, {:.1} s; mean score {:.4} ({})",
        s.queries,
        how.map(|h| format!(" {h}")).unwrap_or_default(),
        s.elapsed_s,
        far.mean,
        score_unit(s.score_kind),
    )?;
    outln!(
        "  {:.0}% confidence sequences on the mean: [{:.4}, {:.4}] with scores clipped at B = {}, [{:.4}, {:.4}] clipped at {}",
        100.0 * (1.0 - p.alpha),
        near.lower,
        near.upper,
        near.clip,
        far.lower,
        far.upper,
        far.clip
    )?;
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    if s.served.calibrated {
        outln!(
            "  served: consistent with {}; excludes {}",
            list(&s.served.consistent),
            list(&s.served.excludes)
        )?;
    } else {
        outln!("  served: not placed on a quantization ladder (no calibration of the reference: pot calibrate --ref REF)")?;
    }
    if let Some((log10_e, n)) = s.uniformity {
        return outln!(
            "  DIFFERENT means the {n} sampled tokens' PITs under the reference are not uniform: e-value 10^{log10_e:.2}, decided at 10^{:.2}, wrong with probability at most α = {}; there is no SAME for sampled text (UNDECIDED: no evidence against the reference within the budget)",
            (1.0 / p.alpha).log10(),
            p.alpha
        );
    }
    outln!(
        "  SAME means mean score (clipped at B) below δ = {}, DIFFERENT above γ = {}, each wrong with probability at most α = {}",
        p.delta, p.gamma, p.alpha
    )
}

pub(crate) fn exit_code(d: Decision) -> ExitCode {
    ExitCode::from(match d {
        Decision::Same => 0,
        Decision::Different => 1,
        Decision::Undecided => 3,
    })
}

pub(crate) fn score_unit(kind: pot::score::ScoreKind) -> &'static str {
    use pot::score::ScoreKind;
    match kind {
        ScoreKind::Kl => "nats of KL per token",
        ScoreKind::BitsPerByte => "bits per byte apart",
        ScoreKind::EndpointKl => "nats of KL per token, on the endpoint's reported tokens",
        ScoreKind::TextMismatch => "share of tokens that are not the reference's first choice",
        ScoreKind::SampledText => {
            "mean PIT of the sampled tokens under the reference (1/2 when it samples the reference)"
        }
    }
}

/// A progress bar on a terminal (none with --json or when stderr is not a terminal).
pub(crate) struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    pub(crate) fn new(n_max: usize, json: bool) -> Self {
        Self((std::io::stderr().is_terminal() && !json).then(|| {
            let b = indicatif::ProgressBar::new(n_max as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {pos}/{len} challenges {msg} [{elapsed_precise}, eta {eta}]",
                )
                .expect("valid template"),
            );
            b
        }))
    }

    pub(crate) fn update(&self, st: &pot::stats::Status) {
        if let Some(b) = &self.0 {
            b.set_position(st.n as u64);
            b.set_message(format!(
                "mean {:.4} in [{:.4}, {:.4}]",
                st.mean, st.lower, st.upper
            ));
        }
    }

    /// Whether a bar is drawn (stderr is a terminal and the output is not JSON).
    pub(crate) fn live(&self) -> bool {
        self.0.is_some()
    }

    pub(crate) fn set(&self, pos: usize, msg: &str) {
        if let Some(b) = &self.0 {
            b.set_position(pos as u64);
            b.set_message(msg.to_string());
        }
    }

    pub(crate) fn message(&self, msg: &str) {
        if let Some(b) = &self.0 {
            b.set_message(msg.to_string());
        }
    }

    /// A line of progress on stderr, above the bar when there is one.
    pub(crate) fn println(&self, line: &str) {
        match &self.0 {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}
