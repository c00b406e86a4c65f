//! Where a model runs: pot's own CPU kernels (the default), or candle's kernels on a GPU
//! (`--device cuda[:N]`, `--device metal[:N]`) or on the CPU (`--device candle-cpu`, the GPU
//! code path run where there is no GPU, to check it).
//!
//! On a device the decoder runs candle's operations only: weights are moved there once at
//! load (`Decoder::to_device`), each in the GGML encoding the file stores where candle has a
//! kernel for it (Q4_0 … Q8_0, Q2_K … Q6_K: its quantized products, which round the
//! activations to 8 bits for few rows as llama.cpp's GPU kernels do), 16-bit and affine
//! (MLX) matrices widened to f32; norms, RoPE tables, attention and the key/value cache live
//! on the device. The embedding table stays in host memory (rows are looked up there, read
//! in place from a mapped GGUF file, and copied over), and the logits come back to the host
//! for scoring.

use std::str::FromStr;
use std::sync::OnceLock;

use candle_core::Device;

use super::ModelError;

/// Where the engine runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// pot's own CPU kernels (run-time chosen AVX-512 / AVX2 / portable).
    #[default]
    Cpu,
    /// candle's kernels on the CPU through the device code path.
    CandleCpu,
    /// An NVIDIA GPU by ordinal (the `cuda` feature).
    Cuda(usize),
    /// An Apple GPU by ordinal (the `metal` feature).
    Metal(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let ordinal = |rest: &str| -> Result<usize, String> {
            match rest {
                "" => Ok(0),
                r => r
                    .strip_prefix(':')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| format!("{s:?}: the GPU's ordinal must be a number (cuda:0)")),
            }
        };
        match s {
            "cpu" => Ok(Self::Cpu),
            "candle-cpu" => Ok(Self::CandleCpu),
            _ if s.starts_with("cuda") => ordinal(&s[4..]).map(Self::Cuda),
            _ if s.starts_with("metal") => ordinal(&s[5..]).map(Self::Metal),
            _ => Err(format!(
                "{s:?}: expected cpu, cuda, cuda:N, metal, metal:N or candle-cpu"
            )),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::CandleCpu => write!(f, "candle-cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

impl DeviceSpec {
    /// The device candle's kernels run on, or `None` for pot's own CPU kernels. A GPU this
    /// build cannot drive is refused with the build that can.
    pub fn open(self) -> Result<Option<Device>, ModelError> {
        let err = |reason: String| ModelError::Device {
            device: self.to_string(),
            reason,
        };
        match self {
            Self::Cpu => Ok(None),
            Self::CandleCpu => Ok(Some(Device::Cpu)),
            Self::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(err(
                        "this pot was built without CUDA; build it with `cargo build --release --features cuda` on a machine with the CUDA toolkit, or leave out --device to run on the CPU".into(),
                    ));
                }
                Device::new_cuda(n).map(Some).map_err(|e| {
                    err(format!(
                        "{} (is GPU {n} present and its driver loaded? nvidia-smi lists them)",
                        super::candle_message(&e)
                    ))
                })
            }
            Self::Metal(n) => {
                if !candle_core::utils::metal_is_available() {
                    return Err(err(
                        "this pot was built without Metal; build it with `cargo build --release --features metal` on macOS, or leave out --device to run on the CPU".into(),
                    ));
                }
                Device::new_metal(n)
                    .map(Some)
                    .map_err(|e| err(super::candle_message(&e)))
            }
        }
    }
}

/// The kernels models run on by default, in words: the CPU instruction set pot's kernels
/// chose, or candle's on a device.
pub fn kernels_in_use() -> String {
    match default_spec() {
        DeviceSpec::Cpu => super::tiles::isa().name().to_string(),
        d => format!("candle's on {d}"),
    }
}

static DEFAULT: OnceLock<DeviceSpec> = OnceLock::new();

/// Set the device models load onto when their [`super::LoadOptions`] name none (`pot
/// --device`); the first call wins.
pub fn set_default(spec: DeviceSpec) {
    let _ = DEFAULT.set(spec);
}

/// The device models load onto when their options name none.
pub fn default_spec() -> DeviceSpec {
    DEFAULT.get().copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_print_back() {
        for (s, want) in [
            ("cpu", DeviceSpec::Cpu),
            ("candle-cpu", DeviceSpec::CandleCpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
            ("metal", DeviceSpec::Metal(0)),
            ("metal:1", DeviceSpec::Metal(1)),
        ] {
            assert_eq!(s.parse::<DeviceSpec>(), Ok(want), "{s}");
            let back: DeviceSpec = want.to_string().parse().unwrap();
            assert_eq!(back, want);
        }
        for bad in ["gpu", "cuda:", "cuda:x", "cuda0", "metal:-1", ""] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_gpu_this_build_cannot_drive_is_refused_with_the_build_that_can() {
        if !candle_core::utils::cuda_is_available() {
            let e = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
        if !candle_core::utils::metal_is_available() {
            let e = DeviceSpec::Metal(0).open().unwrap_err().to_string();
            assert!(e.contains("--features metal"), "{e}");
        }
        assert!(DeviceSpec::Cpu.open().unwrap().is_none());
        assert!(DeviceSpec::CandleCpu.open().unwrap().unwrap().is_cpu());
    }
}
