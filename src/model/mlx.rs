//! MLX checkpoints: Hugging Face folders written by mlx-lm (mlx-community's), whose
//! `config.json` carries `quantization` and whose quantized layers store, beside each
//! `weight`, a `scales` and a `biases` tensor.
//!
//! MLX's affine quantization: each row of an `(n, k)` matrix is cut into groups of
//! `group_size` values (32, 64 or 128); each group has a scale and a bias (the model's dtype,
//! f16, bf16 or f32; scales may be negative) and each value a `bits`-bit integer `q`
//! (2, 3, 4, 5, 6 or 8), so that `w = scale · q + bias`. The integers are one little-endian
//! bit stream per row, packed into uint32 words: value `j` holds bits `j·bits .. (j+1)·bits`.
//! `config.json` names the default `{group_size, bits, mode}` and may override it per layer
//! (`"model.layers.0.mlp.down_proj": {"bits": 6, "group_size": 64}`, or `false` for a layer
//! left unquantized). Norms stay unquantized; the embedding table is quantized like a linear
//! layer, and tied models use it as the output projection.
//!
//! A group of 32·g values is g blocks of 32 sharing one scale and bias, Q4_1's layout with
//! `bits`-bit quants ([`Q8Matrix::from_affine`]). pot keeps them as quants (one byte each)
//! and multiplies them as MLX does, with f32 activations and each block dequantized in
//! registers ([`Q8Matrix::with_f32_activations`]): against the MLX runtime run in f32 this
//! agrees on every top-1 token of SmolLM2 (tests/mlx_real.rs), where llama.cpp's 8-bit
//! activations agreed on 96 %. `--kernels dense` widens the weights to f32.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::q8::Q8Matrix;
use super::ModelError;

/// One layer's quantization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheme {
    /// Bits per value.
    pub bits: u32,
    /// Values per scale and bias.
    pub group: usize,
}

/// A checkpoint's quantization: the default scheme and the per-layer overrides (`None`: the
/// layer is not quantized).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quantization {
    default: Scheme,
    overrides: HashMap<String, Option<Scheme>>,
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Corrupt {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn unsupported(path: &Path, what: impl std::fmt::Display) -> ModelError {
    ModelError::UnsupportedEncoding {
        path: path.display().to_string(),
        what: what.to_string(),
    }
}

/// The bit widths MLX's affine quantization writes.
pub const BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];

fn scheme_of(v: &Value, default: Option<Scheme>, path: &Path) -> Result<Scheme, ModelError> {
    if let Some(mode) = v.get("mode").and_then(Value::as_str) {
        if mode != "affine" {
            return Err(unsupported(
                path,
                format!("MLX quantization mode {mode:?} is not read; pot reads mode \"affine\": re-convert with mlx_lm.convert --q-mode affine"),
            ));
        }
    }
    let num = |key: &str| -> Result<Option<u64>, ModelError> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_u64()
                .map(Some)
                .ok_or_else(|| bad(path, format!("quantization {key} {x} is not a count"))),
        }
    };
    let bits = match (num("bits")?, default) {
        (Some(b), _) => b as u32,
        (None, Some(d)) => d.bits,
        (None, None) => return Err(bad(path, "quantization has no bits")),
    };
    let group = match (num("group_size")?, default) {
        (Some(g), _) => g as usize,
        (None, Some(d)) => d.group,
        (None, None) => return Err(bad(path, "quantization has no group_size")),
    };
    if !BITS.contains(&bits) {
        return Err(unsupported(
            path,
            format!("MLX quantization of {bits} bits is not read; pot reads 2, 3, 4, 5, 6 and 8: re-convert with mlx_lm.convert --q-bits 4"),
        ));
    }
    if group == 0 || group % 32 != 0 {
        return Err(unsupported(
            path,
            format!("MLX quantization groups of {group} are not read; pot reads multiples of 32: re-convert with mlx_lm.convert --q-group-size 64"),
        ));
    }
    Ok(Scheme { bits, group })
}

impl Quantization {
    /// The quantization `config.json` (at `path`, for messages) declares: `quantization`
    /// (mlx-lm), or `quantization_config` when it is mlx-lm's copy of the same. `None` for an
    /// unquantized folder; an error for another tool's quantization (GPTQ, AWQ, bitsandbytes,
    /// FP8), which pot does not read.
    pub fn from_config(config: &Value, path: &Path) -> Result<Option<Self>, ModelError> {
        let q = match (
            config.get("quantization"),
            config.get("quantization_config"),
        ) {
            (Some(q), _) if !q.is_null() => q,
            (_, Some(qc)) if !qc.is_null() => {
                if let Some(method) = qc.get("quant_method").and_then(Value::as_str) {
                    return Err(unsupported(
                        path,
                        format!("{method} quantization is not read; pot reads unquantized Hugging Face folders, MLX folders and GGUF files: pass the unquantized model or a GGUF"),
                    ));
                }
                qc
            }
            _ => return Ok(None),
        };
        let obj = q
            .as_object()
            .ok_or_else(|| bad(path, "quantization is not an object"))?;
        let default = scheme_of(q, None, path)?;
        let mut overrides = HashMap::new();
        for (key, v) in obj {
            match v {
                Value::Object(_) => {
                    overrides.insert(key.clone(), Some(scheme_of(v, Some(default), path)?));
                }
                Value::Bool(false) => {
                    overrides.insert(key.clone(), None);
                }
                _ => {}
            }
        }
        Ok(Some(Self { default, overrides }))
    }

    /// The scheme of layer `module` (e.g. `model.layers.0.mlp.down_proj`); `None` when the
    /// checkpoint leaves it unquantized.
    pub fn scheme(&self, module: &str) -> Option<Scheme> {
        match self.overrides.get(module) {
            Some(s) => *s,
            None => Some(self.default),
        }
    }

    /// The default scheme.
    pub fn default_scheme(&self) -> Scheme {
        self.default
    }
}

/// The `count` values of a little-endian bit stream of `bits`-bit integers.
pub fn unpack(bytes: &[u8], bits: u32, count: usize) -> Option<Vec<u8>> {
    if (count * bits as usize).div_ceil(8) > bytes.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    match bits {
        8 => out.extend_from_slice(&bytes[..count]),
        4 => {
            for &b in &bytes[..count / 2] {
                out.push(b & 0x0f);
                out.push(b >> 4);
            }
            if count % 2 == 1 {
                out.push(bytes[count / 2] & 0x0f);
            }
        }
        _ => {
            let mask = (1u64 << bits) - 1;
            let (mut acc, mut have) = (0u64, 0u32);
            let mut it = bytes.iter();
            while out.len() < count {
                while have < bits {
                    acc |= (*it.next()? as u64) << have;
                    have += 8;
                }
                out.push((acc & mask) as u8);
                acc >>= bits;
                have -= bits;
            }
        }
    }
    Some(out)
}

/// An `(n, k)` matrix from its packed `weight` bytes (`n` rows of `k·bits/32` uint32 words)
/// and its `(n, k/group)` scales and biases as f32; `None` when the sizes disagree.
pub fn matrix(
    packed: &[u8],
    n: usize,
    k: usize,
    scheme: Scheme,
    scales: &[f32],
    biases: &[f32],
) -> Option<Q8Matrix> {
    if !k.is_multiple_of(scheme.group) || packed.len() * 8 != n * k * scheme.bits as usize {
        return None;
    }
    let quants = unpack(packed, scheme.bits, n * k)?;
    Q8Matrix::from_affine(n, k, scheme.bits, scheme.group, quants, scales, biases)
        .map(Q8Matrix::with_f32_activations)
}

/// The error for a layer whose stored shapes do not fit its declared scheme.
pub fn shape_error(path: &Path, module: &str, why: impl std::fmt::Display) -> ModelError {
    bad(path, format!("MLX layer {module}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Packs values as MLX does (one little-endian bit stream), for the tests.
    fn pack(values: &[u8], bits: u32) -> Vec<u8> {
        let mut out = vec![0u8; (values.len() * bits as usize).div_ceil(8)];
        for (j, &v) in values.iter().enumerate() {
            for i in 0..bits as usize {
                let bit = j * bits as usize + i;
                out[bit / 8] |= ((v >> i) & 1) << (bit % 8);
            }
        }
        out
    }

    #[test]
    fn unpacks_every_width_mlx_writes() {
        for bits in BITS {
            let values: Vec<u8> = (0..256u32)
                .map(|i| ((i * 37 + 11) % (1 << bits)) as u8)
                .collect();
            let packed = pack(&values, bits);
            assert_eq!(
                unpack(&packed, bits, values.len()).unwrap(),
                values,
                "{bits}"
            );
            assert!(unpack(&packed[..packed.len() - 1], bits, values.len()).is_none());
        }
    }

    /// `mx.quantize` of `arange(64)` at 3 bits chose scale −9 and bias 63 (the edge with the
    /// larger magnitude is the bias, and the scale is negative): `w = bias + scale · q`.
    #[test]
    fn dequantizes_as_mlx_with_negative_scales() {
        let q: Vec<u8> = (0..64u32).map(|i| (7 - (i * 7 + 32) / 64) as u8).collect();
        let packed = pack(&q, 3);
        let m = matrix(
            &packed,
            1,
            64,
            Scheme { bits: 3, group: 64 },
            &[-9.0],
            &[63.0],
        )
        .unwrap();
        let rows = m.rows(&[0]).unwrap();
        for (j, &v) in rows.iter().enumerate() {
            assert_eq!(v, 63.0 - 9.0 * q[j] as f32);
        }
    }

    #[test]
    fn eight_bit_quants_multiply_as_their_values() {
        // 8-bit affine quants are stored as i8 with the bias moved; the product must not
        // change (nor saturate: 255 · 127 · 2 would overflow the kernel's 16-bit pairs).
        let (n, k) = (3, 64);
        let q: Vec<u8> = (0..n * k).map(|i| (i * 97 % 256) as u8).collect();
        let scales = [0.01f32, -0.02, 0.005];
        let biases = [-1.0f32, 0.5, 0.25];
        let m = matrix(
            &pack(&q, 8),
            n,
            k,
            Scheme { bits: 8, group: 64 },
            &scales,
            &biases,
        )
        .unwrap();
        let w: Vec<f32> = (0..n * k)
            .map(|i| scales[i / k] * q[i] as f32 + biases[i / k])
            .collect();
        assert_eq!(m.rows(&[0, 1, 2]).unwrap().len(), n * k);
        for (a, b) in m.rows(&[0, 1, 2]).unwrap().iter().zip(&w) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // Two activation rows: f32 activations give the dequantized weights' products.
        let x: Vec<f32> = (0..2 * k)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.07)
            .collect();
        let got = m.matmul(&x, 2);
        for row in 0..2 {
            for r in 0..n {
                let want: f32 = (0..k).map(|i| w[r * k + i] * x[row * k + i]).sum();
                let g = got[row * n + r];
                assert!(
                    (g - want).abs() < 1e-4 * want.abs().max(1.0),
                    "{r}: {g} vs {want}"
                );
            }
        }
        // llama.cpp's 8-bit activations on the same quants: close, and not saturated.
        let q8 = Q8Matrix::from_affine(n, k, 8, 64, q.clone(), &scales, &biases).unwrap();
        let got = q8.matmul(&x[..k], 1);
        for r in 0..n {
            let want: f32 = (0..k).map(|i| w[r * k + i] * x[i]).sum();
            assert!(
                (got[r] - want).abs() < 0.02 * want.abs().max(1.0),
                "{r}: {} vs {want}",
                got[r]
            );
        }
    }

    #[test]
    fn reads_defaults_overrides_and_refuses_other_tools() {
        let p = Path::new("config.json");
        let c = json!({"quantization": {"group_size": 64, "bits": 4, "mode": "affine",
            "model.layers.0.mlp.down_proj": {"group_size": null, "bits": 6, "mode": "affine"},
            "lm_head": false}});
        let q = Quantization::from_config(&c, p).unwrap().unwrap();
        assert_eq!(
            q.scheme("model.layers.1.mlp.up_proj"),
            Some(Scheme { bits: 4, group: 64 })
        );
        assert_eq!(
            q.scheme("model.layers.0.mlp.down_proj"),
            Some(Scheme { bits: 6, group: 64 })
        );
        assert_eq!(q.scheme("lm_head"), None);
        assert!(Quantization::from_config(&json!({}), p).unwrap().is_none());
        let gptq = json!({"quantization_config": {"quant_method": "gptq", "bits": 4}});
        let e = Quantization::from_config(&gptq, p).unwrap_err().to_string();
        assert!(e.contains("gptq"), "{e}");
        let fp4 = json!({"quantization": {"group_size": 32, "bits": 4, "mode": "mxfp4"}});
        let e = Quantization::from_config(&fp4, p).unwrap_err().to_string();
        assert!(e.contains("mxfp4") && e.contains("affine"), "{e}");
        let seven = json!({"quantization": {"group_size": 64, "bits": 7}});
        assert!(Quantization::from_config(&seven, p).is_err());
        let odd = json!({"quantization": {"group_size": 48, "bits": 4}});
        assert!(Quantization::from_config(&odd, p).is_err());
    }
}
