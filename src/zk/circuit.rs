//! The circuit: pot's fixed-point betting test ([`crate::stats::fixed`]) on scores committed
//! by a Poseidon chain, step by step as constraints.
//!
//! # What it constrains
//! * **The commitment.** `c₀ = Poseidon(salt, TAG)`, `cᵢ = Poseidon(cᵢ₋₁, qᵢ)` (halo2_gadgets'
//!   P128Pow5T3, width 3, rate 2); `c_n` is the one public input. The salt is private: the
//!   scores have little entropy, and without it a commitment to them could be searched.
//! * **The grid.** Each `qᵢ` lies in `0..=Q` (range checks on `qᵢ` and `Q − qᵢ`).
//! * **Each bet's wealth.** For each side and bet, with the side's grid null and the bet's
//!   share as fixed values: `w_prev · num = t · den + r` with `r + s + 1 = den` (so
//!   `t = ⌊w_prev · num / den⌋`), `t` split at bit 84 into `low` and `high`, and the new wealth
//!   `low` when `high = 0`, else the cap (a bit, and an inverse of `high` when it is set).
//! * **The mixture.** `S = Σ c_g w_g` at each cycle end that could have decided.
//! * **The verdict.** Before the last cycle end nothing crossed (`S_d < T`, `S_s < T` at each
//!   cycle end from `n_min`); at the last: DIFFERENT `S_d ≥ T` and `S_d ≥ S_s`; SAME `S_s ≥ T`
//!   and not DIFFERENT (`S_d < T` or `S_d < S_s`, the prover's choice of which, kept private);
//!   UNDECIDED nothing crossed, at `n_max`.
//! * **The bounds.** For each published end of the confidence sequence that says something,
//!   one more side (its grid null from the published value) runs the same bets over the
//!   scores of complete cycles, and its mixture at the end is `≥ T`.
//!
//! Every range check is a sum of 12-bit limbs looked up in a table of `0..4096`. Intermediate
//! values stay below 2¹⁵⁰, far below the field's 2²⁵⁴, so every equation holds over the
//! integers, not just modulo p.
//!
//! What is public is the circuit's *shape* (the number of scores, the cycle ends it checks,
//! the verdict, the nulls and the bounds' nulls, the threshold) plus the commitment: the verifier rebuilds the
//! verifying key from the statement, so a proof made for another shape fails.

use halo2_gadgets::poseidon::{
    primitives::{self as poseidon, ConstantLength, P128Pow5T3},
    Hash as PoseidonHash, Pow5Chip, Pow5Config,
};
use halo2_proofs::pasta::group::ff::{Field, PrimeField};
use halo2_proofs::{
    circuit::{AssignedCell, Layouter, SimpleFloorPlanner, Value},
    pasta::Fp,
    plonk::{
        Advice, Circuit, Column, ConstraintSystem, Error, Expression, Fixed, Instance, Selector,
        TableColumn,
    },
    poly::Rotation,
};

use crate::stats::fixed::{self, Null, CAP, Q, SHARES, WEIGHTS};
use crate::stats::{Decision, CYCLE};

/// Bits per range-check limb.
pub const LIMB_BITS: usize = 12;
/// Limbs of `t` (120 bits: `t < 2¹⁰²`).
const T_LIMBS: usize = 10;
/// Limbs of `t` below the cap (84 bits).
const LOW_LIMBS: usize = 7;
/// Limbs of the remainder and its complement (36 bits each: `den < 2³¹`).
const R_LIMBS: usize = 3;
/// Rows of one wealth update.
const UPDATE_ROWS: usize = T_LIMBS + 2 * R_LIMBS;
/// Limbs of a comparison (96 bits: mixtures stay below 2⁸⁹).
const CMP_LIMBS: usize = 8;
/// Limbs of a grid score and of its complement (36 bits each).
const Q_LIMBS: usize = 3;

/// The domain tag hashed with the salt to start the chain ("pot verdict v1").
pub fn chain_tag() -> Fp {
    Fp::from(0x706f_7476_6431u64)
}

/// The Poseidon hash of two field elements (outside the circuit).
pub fn hash2(a: Fp, b: Fp) -> Fp {
    poseidon::Hash::<_, P128Pow5T3, ConstantLength<2>, 3, 2>::init().hash([a, b])
}

/// The commitment to grid scores under a salt: the chain's last link.
pub fn commitment(salt: Fp, qs: &[u64]) -> Fp {
    qs.iter()
        .fold(hash2(salt, chain_tag()), |c, &q| hash2(c, Fp::from(q)))
}

/// The public structure of a proof: what the verifier rebuilds the circuit from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Scores committed and proven (the queries to the verdict).
    pub n: usize,
    /// Fewest challenges before a decision.
    pub n_min: usize,
    /// The verdict.
    pub decision: Decision,
    /// Grid null of the DIFFERENT side (refuting "μ ≤ M/Q").
    pub m_different: u64,
    /// Grid null of the SAME side (refuting "μ ≥ M/Q").
    pub m_same: u64,
    /// The mixture's crossing point.
    pub threshold: u128,
    /// Grid null of the confidence sequence's lower end (refuting "μ ≤ M/Q" on the scores
    /// of complete cycles), when the published lower end is above 0.
    pub lower: Option<u64>,
    /// Grid null of its upper end (refuting "μ ≥ M/Q"), when the published upper end is
    /// below the clip.
    pub upper: Option<u64>,
}

impl Shape {
    /// The cycle ends at which the test looked: multiples of [`CYCLE`] from `n_min` to `n`.
    fn looks(&self) -> impl Iterator<Item = usize> + '_ {
        (1..=self.n).filter(move |i| i.is_multiple_of(CYCLE) && *i >= self.n_min)
    }

    /// Scores in complete cycles: those the confidence sequence is computed on.
    pub fn full(&self) -> usize {
        self.n / CYCLE * CYCLE
    }

    /// Every betting side the circuit runs: the two deciding sides on all `n` scores, then
    /// the bounds' sides on the scores of complete cycles. Each: its null, its grid null, and
    /// the scores it sees.
    fn sides(&self) -> Vec<(Null, u64, usize)> {
        let mut sides = vec![
            (Null::AtMost, self.m_different, self.n),
            (Null::AtLeast, self.m_same, self.n),
        ];
        sides.extend(self.lower.map(|m| (Null::AtMost, m, self.full())));
        sides.extend(self.upper.map(|m| (Null::AtLeast, m, self.full())));
        sides
    }

    /// Rows the circuit needs (the largest of its two stacks: the test's regions, and the
    /// Poseidon chain's), and the table's 4096.
    pub fn rows(&self) -> usize {
        let steps: usize = self.sides().iter().map(|s| s.2).sum();
        let bounds = self.sides().len() - 2;
        let updates = steps * SHARES.len() * UPDATE_ROWS;
        let scores = self.n * 2 * Q_LIMBS;
        let looks = self.looks().count();
        let checks =
            (looks * 2 + bounds) * (SHARES.len() + 1) + ((looks + 1) * 2 + bounds) * CMP_LIMBS;
        let poseidon = (self.n + 1) * 40;
        (updates + scores + checks)
            .max(poseidon)
            .max(1 << LIMB_BITS)
            + 16
    }

    /// The smallest `k` with `2^k` rows enough for the circuit.
    pub fn k(&self) -> u32 {
        let mut k = 1;
        while (1usize << k) < self.rows() {
            k += 1;
        }
        k
    }
}

/// One wealth update as integers.
#[derive(Clone, Copy, Debug)]
struct Update {
    x: u64,
    t: u128,
    r: u128,
    s: u128,
    w_new: u128,
}

fn update(null: Null, m: u64, q: u64, p: u64, w_prev: u128) -> Update {
    let (num, den) = fixed::factor(null, m, q, p);
    let t = w_prev * num / den;
    let r = w_prev * num - t * den;
    let x = match null {
        Null::AtMost => q,
        Null::AtLeast => Q - q,
    };
    Update {
        x,
        t,
        r,
        s: den - 1 - r,
        w_new: t.min(CAP),
    }
}

/// The private witness: the salt and the grid scores.
#[derive(Clone, Debug)]
pub struct Witness {
    /// The chain's salt.
    pub salt: Fp,
    /// Grid scores, `0..=Q` each.
    pub qs: Vec<u64>,
}

/// The circuit of one verdict.
#[derive(Clone, Debug)]
pub struct VerdictCircuit {
    /// The public structure.
    pub shape: Shape,
    /// The witness (none when building keys).
    pub witness: Option<Witness>,
}

/// Columns and gates.
#[derive(Clone, Debug)]
pub struct VerdictConfig {
    limb: Column<Advice>,
    aux: Column<Advice>,
    fixed: [Column<Fixed>; 4],
    table: TableColumn,
    instance: Column<Instance>,
    s_limb: Selector,
    s_update: Selector,
    s_score: Selector,
    s_mix: Selector,
    s_lt: Selector,
    s_ge: Selector,
    s_ge2: Selector,
    s_not: Selector,
    poseidon: Pow5Config<Fp, 3, 2>,
}

/// A comparison's differences from its operands and fixed value: the first must equal the
/// sum of the limbs, the rest vanish.
type Differences = fn(&[Expression<Fp>; 3], Expression<Fp>) -> Vec<Expression<Fp>>;

fn limbs_expr(limbs: &[Expression<Fp>]) -> Expression<Fp> {
    let base = Fp::from(1u64 << LIMB_BITS);
    limbs
        .iter()
        .rev()
        .fold(Expression::Constant(Fp::zero()), |acc, l| {
            acc * Expression::Constant(base) + l.clone()
        })
}

fn limbs_of(v: u128, count: usize) -> Vec<u64> {
    (0..count)
        .map(|j| {
            if j * LIMB_BITS >= 128 {
                0
            } else {
                ((v >> (j * LIMB_BITS)) & ((1 << LIMB_BITS) - 1)) as u64
            }
        })
        .collect()
}

fn fp(v: u128) -> Fp {
    Fp::from_u128(v)
}

impl Circuit<Fp> for VerdictCircuit {
    type Config = VerdictConfig;
    type FloorPlanner = SimpleFloorPlanner;

    fn without_witnesses(&self) -> Self {
        Self {
            shape: self.shape.clone(),
            witness: None,
        }
    }

    fn configure(meta: &mut ConstraintSystem<Fp>) -> VerdictConfig {
        let limb = meta.advice_column();
        let aux = meta.advice_column();
        let fixed = [
            meta.fixed_column(),
            meta.fixed_column(),
            meta.fixed_column(),
            meta.fixed_column(),
        ];
        let table = meta.lookup_table_column();
        let instance = meta.instance_column();
        meta.enable_equality(aux);
        meta.enable_equality(instance);
        let s_limb = meta.complex_selector();
        let (s_update, s_score, s_mix) = (meta.selector(), meta.selector(), meta.selector());
        let (s_lt, s_ge, s_ge2, s_not) = (
            meta.selector(),
            meta.selector(),
            meta.selector(),
            meta.selector(),
        );

        meta.lookup(|m| {
            let s = m.query_selector(s_limb);
            let l = m.query_advice(limb, Rotation::cur());
            vec![(s * l, table)]
        });

        let c = |v: u128| Expression::Constant(fp(v));
        meta.create_gate("wealth update", |m| {
            let s = m.query_selector(s_update);
            let l: Vec<_> = (0..UPDATE_ROWS)
                .map(|j| m.query_advice(limb, Rotation(j as i32)))
                .collect();
            let mut a = |j: i32| m.query_advice(aux, Rotation(j));
            let (w_prev, q, x, w_new, bcap, inv) = (a(0), a(1), a(2), a(3), a(4), a(5));
            let mut f = |j: usize| m.query_fixed(fixed[j]);
            let (base, share, den, mirror) = (f(0), f(1), f(2), f(3));
            let t = limbs_expr(&l[..T_LIMBS]);
            let low = limbs_expr(&l[..LOW_LIMBS]);
            let high = limbs_expr(&l[LOW_LIMBS..T_LIMBS]);
            let r = limbs_expr(&l[T_LIMBS..T_LIMBS + R_LIMBS]);
            let rest = limbs_expr(&l[T_LIMBS + R_LIMBS..]);
            let one = c(1);
            let num = base + share * x.clone();
            vec![
                s.clone()
                    * (x - mirror.clone() * (c(Q as u128) - q.clone())
                        - (one.clone() - mirror) * q),
                s.clone() * (w_prev * num - t * den.clone() - r.clone()),
                s.clone() * (r + rest + one.clone() - den),
                s.clone() * bcap.clone() * (one.clone() - bcap.clone()),
                s.clone() * (one.clone() - bcap.clone()) * high.clone(),
                s.clone() * bcap.clone() * (high * inv - one.clone()),
                s * (w_new - bcap.clone() * c(CAP) - (one - bcap) * low),
            ]
        });

        meta.create_gate("grid score", |m| {
            let s = m.query_selector(s_score);
            let l: Vec<_> = (0..2 * Q_LIMBS)
                .map(|j| m.query_advice(limb, Rotation(j as i32)))
                .collect();
            let q = m.query_advice(aux, Rotation::cur());
            vec![
                s.clone() * (q.clone() - limbs_expr(&l[..Q_LIMBS])),
                s * (c(Q as u128) - q - limbs_expr(&l[Q_LIMBS..])),
            ]
        });

        meta.create_gate("mixture", |m| {
            let s = m.query_selector(s_mix);
            let sum = WEIGHTS
                .iter()
                .enumerate()
                .fold(Expression::Constant(Fp::zero()), |acc, (g, &w)| {
                    acc + m.query_advice(aux, Rotation(g as i32)) * c(w as u128)
                });
            let total = m.query_advice(aux, Rotation(WEIGHTS.len() as i32));
            vec![s * (total - sum)]
        });

        // Comparisons: the difference, a sum of limbs, is non-negative.
        let cmp = |name: &'static str,
                   sel: Selector,
                   meta: &mut ConstraintSystem<Fp>,
                   diff: Differences| {
            meta.create_gate(name, |m| {
                let s = m.query_selector(sel);
                let l: Vec<_> = (0..CMP_LIMBS)
                    .map(|j| m.query_advice(limb, Rotation(j as i32)))
                    .collect();
                let a = [
                    m.query_advice(aux, Rotation(0)),
                    m.query_advice(aux, Rotation(1)),
                    m.query_advice(aux, Rotation(2)),
                ];
                let k = m.query_fixed(fixed[0]);
                diff(&a, k)
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| {
                        if i == 0 {
                            s.clone() * (e - limbs_expr(&l))
                        } else {
                            s.clone() * e
                        }
                    })
                    .collect::<Vec<_>>()
            });
        };
        // a < T: T − 1 − a ≥ 0 (the fixed value is T − 1).
        cmp("below", s_lt, meta, |a, k| vec![k - a[0].clone()]);
        // a ≥ T: a − T ≥ 0.
        cmp("at or above", s_ge, meta, |a, k| vec![a[0].clone() - k]);
        // a ≥ b.
        cmp("at least", s_ge2, meta, |a, _| {
            vec![a[0].clone() - a[1].clone()]
        });
        // Not (a ≥ T and a ≥ b): with the private bit e, a < T (e = 1) or a < b (e = 0).
        cmp("not both", s_not, meta, |a, k| {
            let one = Expression::Constant(Fp::one());
            let e = a[2].clone();
            vec![
                e.clone() * (k - a[0].clone())
                    + (one.clone() - e.clone()) * (a[1].clone() - one.clone() - a[0].clone()),
                e.clone() * (one - e),
            ]
        });

        let state = [
            meta.advice_column(),
            meta.advice_column(),
            meta.advice_column(),
        ];
        let partial_sbox = meta.advice_column();
        let rc_a = [
            meta.fixed_column(),
            meta.fixed_column(),
            meta.fixed_column(),
        ];
        let rc_b = [
            meta.fixed_column(),
            meta.fixed_column(),
            meta.fixed_column(),
        ];
        meta.enable_constant(rc_b[0]);
        let poseidon = Pow5Chip::configure::<P128Pow5T3>(meta, state, partial_sbox, rc_a, rc_b);

        VerdictConfig {
            limb,
            aux,
            fixed,
            table,
            instance,
            s_limb,
            s_update,
            s_score,
            s_mix,
            s_lt,
            s_ge,
            s_ge2,
            s_not,
            poseidon,
        }
    }

    fn synthesize(&self, cfg: VerdictConfig, mut layouter: impl Layouter<Fp>) -> Result<(), Error> {
        let shape = &self.shape;
        let w = self.witness.as_ref();
        let known = |f: &dyn Fn(&Witness) -> u128| -> Value<Fp> {
            match w {
                Some(w) => Value::known(fp(f(w))),
                None => Value::unknown(),
            }
        };

        layouter.assign_table(
            || "12-bit limbs",
            |mut t| {
                for v in 0..(1usize << LIMB_BITS) {
                    t.assign_cell(|| "limb", cfg.table, v, || Value::known(Fp::from(v as u64)))?;
                }
                Ok(())
            },
        )?;

        // Limbs of `values` from row `at` of a region, each looked up.
        fn put_limbs(
            region: &mut halo2_proofs::circuit::Region<'_, Fp>,
            cfg: &VerdictConfig,
            at: usize,
            values: Value<Vec<u64>>,
            count: usize,
        ) -> Result<(), Error> {
            for j in 0..count {
                cfg.s_limb.enable(region, at + j)?;
                region.assign_advice(
                    || "limb",
                    cfg.limb,
                    at + j,
                    || values.as_ref().map(|v| Fp::from(v[j])),
                )?;
            }
            Ok(())
        }

        // The grid scores, range-checked.
        let mut q_cells: Vec<AssignedCell<Fp, Fp>> = Vec::with_capacity(shape.n);
        for i in 0..shape.n {
            let q = known(&|w| w.qs[i] as u128);
            let cell = layouter.assign_region(
                || format!("score {i}"),
                |mut region| {
                    cfg.s_score.enable(&mut region, 0)?;
                    let cell = region.assign_advice(|| "q", cfg.aux, 0, || q)?;
                    let limbs = match w {
                        Some(w) => {
                            let q = w.qs[i] as u128;
                            let mut l = limbs_of(q, Q_LIMBS);
                            l.extend(limbs_of(Q as u128 - q.min(Q as u128), Q_LIMBS));
                            Value::known(l)
                        }
                        None => Value::unknown(),
                    };
                    put_limbs(&mut region, &cfg, 0, limbs, 2 * Q_LIMBS)?;
                    Ok(cell)
                },
            )?;
            q_cells.push(cell);
        }

        // The wealth of every bet of every side, step by step.
        let sides = shape.sides();
        let trace: Option<Vec<Vec<[Update; 12]>>> = w.map(|w| {
            let mut wealth = vec![[fixed::ONE; 12]; sides.len()];
            w.qs.iter()
                .enumerate()
                .map(|(i, &q)| {
                    let mut step = Vec::new();
                    for (s, &(null, m, len)) in sides.iter().enumerate() {
                        if i >= len {
                            continue;
                        }
                        let mut bets = [update(Null::AtMost, 1, 0, 0, 0); 12];
                        for (g, &p) in SHARES.iter().enumerate() {
                            let u = update(null, m, q, p, wealth[s][g]);
                            wealth[s][g] = u.w_new;
                            bets[g] = u;
                        }
                        step.push(bets);
                    }
                    step
                })
                .collect()
        });
        let mut wealth_cells: Vec<Vec<Option<AssignedCell<Fp, Fp>>>> =
            vec![vec![None; 12]; sides.len()];
        let mut mixtures: Vec<[AssignedCell<Fp, Fp>; 2]> = Vec::new();
        let mut bound_mixtures: Vec<(usize, AssignedCell<Fp, Fp>)> = Vec::new();
        let looks: Vec<usize> = shape.looks().collect();
        // The mixture `S = Σ c_g w_g` of one side's bets.
        fn mixture(
            layouter: &mut impl Layouter<Fp>,
            cfg: &VerdictConfig,
            name: String,
            cells: Vec<AssignedCell<Fp, Fp>>,
        ) -> Result<AssignedCell<Fp, Fp>, Error> {
            layouter.assign_region(
                || name.clone(),
                |mut region| {
                    cfg.s_mix.enable(&mut region, 0)?;
                    let mut sum = Value::known(Fp::zero());
                    for (g, c) in cells.iter().enumerate() {
                        c.copy_advice(|| "w", &mut region, cfg.aux, g)?;
                        let wg = Fp::from(WEIGHTS[g]);
                        sum = sum + c.value().map(|v| *v * wg);
                    }
                    region.assign_advice(|| "S", cfg.aux, WEIGHTS.len(), || sum)
                },
            )
        }
        for i in 0..shape.n {
            for (s, &(null, m, len)) in sides.iter().enumerate() {
                if i >= len {
                    continue;
                }
                for (g, &p) in SHARES.iter().enumerate() {
                    let (base, den) = match null {
                        Null::AtMost => ((100 - p) as u128 * m as u128, 100 * m as u128),
                        Null::AtLeast => {
                            ((100 - p) as u128 * (Q - m) as u128, 100 * (Q - m) as u128)
                        }
                    };
                    let mirror = u128::from(null == Null::AtLeast);
                    let u = trace.as_ref().map(|t| t[i][s][g]);
                    let prev = wealth_cells[s][g].clone();
                    let cell = layouter.assign_region(
                        || format!("update {i} {s} {g}"),
                        |mut region| {
                            cfg.s_update.enable(&mut region, 0)?;
                            for (j, v) in [base, p as u128, den, mirror].into_iter().enumerate() {
                                region.assign_fixed(
                                    || "constant",
                                    cfg.fixed[j],
                                    0,
                                    || Value::known(fp(v)),
                                )?;
                            }
                            let val = |f: &dyn Fn(&Update) -> u128| match &u {
                                Some(u) => Value::known(fp(f(u))),
                                None => Value::unknown(),
                            };
                            match &prev {
                                Some(c) => {
                                    c.copy_advice(|| "w_prev", &mut region, cfg.aux, 0)?;
                                }
                                None => {
                                    region.assign_advice_from_constant(
                                        || "w_0",
                                        cfg.aux,
                                        0,
                                        fp(fixed::ONE),
                                    )?;
                                }
                            }
                            q_cells[i].copy_advice(|| "q", &mut region, cfg.aux, 1)?;
                            region.assign_advice(|| "x", cfg.aux, 2, || val(&|u| u.x as u128))?;
                            let new = region.assign_advice(
                                || "w_new",
                                cfg.aux,
                                3,
                                || val(&|u| u.w_new),
                            )?;
                            let high = |u: &Update| u.t >> (LOW_LIMBS * LIMB_BITS);
                            region.assign_advice(
                                || "cap bit",
                                cfg.aux,
                                4,
                                || val(&|u| u128::from(high(u) > 0)),
                            )?;
                            region.assign_advice(
                                || "inverse of high",
                                cfg.aux,
                                5,
                                || match &u {
                                    Some(u) => Value::known(
                                        Option::from(fp(high(u)).invert()).unwrap_or(Fp::zero()),
                                    ),
                                    None => Value::unknown(),
                                },
                            )?;
                            let limbs = u.map(|u| {
                                let mut l = limbs_of(u.t, T_LIMBS);
                                l.extend(limbs_of(u.r, R_LIMBS));
                                l.extend(limbs_of(u.s, R_LIMBS));
                                l
                            });
                            let limbs = match limbs {
                                Some(l) => Value::known(l),
                                None => Value::unknown(),
                            };
                            put_limbs(&mut region, &cfg, 0, limbs, UPDATE_ROWS)?;
                            Ok(new)
                        },
                    )?;
                    wealth_cells[s][g] = Some(cell);
                }
            }
            let step = i + 1;
            let cells_of = |s: usize| -> Vec<AssignedCell<Fp, Fp>> {
                wealth_cells[s]
                    .iter()
                    .map(|c| c.clone().expect("assigned"))
                    .collect()
            };
            if looks.contains(&step) {
                let mut pair = Vec::new();
                for s in 0..2 {
                    let total = mixture(
                        &mut layouter,
                        &cfg,
                        format!("mixture {step} {s}"),
                        cells_of(s),
                    )?;
                    pair.push(total);
                }
                mixtures.push([pair[0].clone(), pair[1].clone()]);
            }
            if step == shape.full() {
                for s in 2..sides.len() {
                    let total = mixture(&mut layouter, &cfg, format!("bound {s}"), cells_of(s))?;
                    bound_mixtures.push((s, total));
                }
            }
        }

        // The mixtures' values, for the comparisons' limbs.
        let mix_at = |step: usize, s: usize| -> Option<u128> {
            trace.as_ref().map(|t| {
                t[step - 1][s]
                    .iter()
                    .zip(WEIGHTS)
                    .map(|(u, c)| u.w_new * c as u128)
                    .sum()
            })
        };
        let mix_value = |look: usize, s: usize| mix_at(looks[look], s);
        let t = shape.threshold;
        enum Cmp {
            Below(usize, usize),
            AtOrAbove(usize, usize),
            AtLeast(usize),
            NotBoth(usize),
            Bound(usize),
        }
        let mut checks = Vec::new();
        let last = looks.len();
        for (l, &look) in looks.iter().enumerate() {
            let final_look = l + 1 == last && look == shape.n;
            if !final_look || shape.decision == Decision::Undecided {
                checks.push(Cmp::Below(l, 0));
                checks.push(Cmp::Below(l, 1));
            } else if shape.decision == Decision::Different {
                checks.push(Cmp::AtOrAbove(l, 0));
                checks.push(Cmp::AtLeast(l));
            } else {
                checks.push(Cmp::AtOrAbove(l, 1));
                checks.push(Cmp::NotBoth(l));
            }
        }
        // Each published bound: its side's mixture, over the complete cycles, crossed.
        checks.extend((0..bound_mixtures.len()).map(Cmp::Bound));
        for (ci, check) in checks.iter().enumerate() {
            layouter.assign_region(
                || format!("check {ci}"),
                |mut region| {
                    let (sel, k, cells, diff, bit): (_, u128, Vec<_>, Option<u128>, Option<u128>) =
                        match *check {
                            Cmp::Below(l, s) => (
                                cfg.s_lt,
                                t - 1,
                                vec![mixtures[l][s].clone()],
                                mix_value(l, s).map(|v| (t - 1).wrapping_sub(v)),
                                None,
                            ),
                            Cmp::AtOrAbove(l, s) => (
                                cfg.s_ge,
                                t,
                                vec![mixtures[l][s].clone()],
                                mix_value(l, s).map(|v| v.wrapping_sub(t)),
                                None,
                            ),
                            Cmp::Bound(b) => (
                                cfg.s_ge,
                                t,
                                vec![bound_mixtures[b].1.clone()],
                                mix_at(shape.full(), bound_mixtures[b].0)
                                    .map(|v| v.wrapping_sub(t)),
                                None,
                            ),
                            Cmp::AtLeast(l) => (
                                cfg.s_ge2,
                                0,
                                vec![mixtures[l][0].clone(), mixtures[l][1].clone()],
                                mix_value(l, 0)
                                    .zip(mix_value(l, 1))
                                    .map(|(a, b)| a.wrapping_sub(b)),
                                None,
                            ),
                            Cmp::NotBoth(l) => {
                                let ab = mix_value(l, 0).zip(mix_value(l, 1));
                                let bit = ab.map(|(a, _)| u128::from(a < t));
                                (
                                    cfg.s_not,
                                    t - 1,
                                    vec![mixtures[l][0].clone(), mixtures[l][1].clone()],
                                    ab.map(|(a, b)| {
                                        if a < t {
                                            t - 1 - a
                                        } else {
                                            b.wrapping_sub(1).wrapping_sub(a)
                                        }
                                    }),
                                    Some(bit.unwrap_or(0)),
                                )
                            }
                        };
                    sel.enable(&mut region, 0)?;
                    region.assign_fixed(|| "k", cfg.fixed[0], 0, || Value::known(fp(k)))?;
                    for (j, c) in cells.iter().enumerate() {
                        c.copy_advice(|| "operand", &mut region, cfg.aux, j)?;
                    }
                    if cells.len() < 2 {
                        region.assign_advice(
                            || "unused",
                            cfg.aux,
                            1,
                            || Value::known(Fp::zero()),
                        )?;
                    }
                    let e = match (bit, w) {
                        (Some(b), Some(_)) => Value::known(fp(b)),
                        (_, None) => Value::unknown(),
                        (None, Some(_)) => Value::known(Fp::zero()),
                    };
                    region.assign_advice(|| "choice", cfg.aux, 2, || e)?;
                    let limbs = match (w, diff) {
                        (Some(_), Some(d)) => Value::known(limbs_of(d, CMP_LIMBS)),
                        _ => Value::unknown(),
                    };
                    put_limbs(&mut region, &cfg, 0, limbs, CMP_LIMBS)
                },
            )?;
        }

        // The commitment chain: c₀ = H(salt, TAG), cᵢ = H(cᵢ₋₁, qᵢ); c_n is public.
        let salt = match w {
            Some(w) => Value::known(w.salt),
            None => Value::unknown(),
        };
        let (salt_cell, tag_cell) = layouter.assign_region(
            || "chain start",
            |mut region| {
                let s = region.assign_advice(|| "salt", cfg.aux, 0, || salt)?;
                let t = region.assign_advice_from_constant(|| "tag", cfg.aux, 1, chain_tag())?;
                Ok((s, t))
            },
        )?;
        let mut link = {
            let chip = Pow5Chip::construct(cfg.poseidon.clone());
            let h = PoseidonHash::<_, _, P128Pow5T3, ConstantLength<2>, 3, 2>::init(
                chip,
                layouter.namespace(|| "init 0"),
            )?;
            h.hash(layouter.namespace(|| "link 0"), [salt_cell, tag_cell])?
        };
        for (i, q) in q_cells.iter().enumerate() {
            let chip = Pow5Chip::construct(cfg.poseidon.clone());
            let h = PoseidonHash::<_, _, P128Pow5T3, ConstantLength<2>, 3, 2>::init(
                chip,
                layouter.namespace(|| format!("init {}", i + 1)),
            )?;
            link = h.hash(
                layouter.namespace(|| format!("link {}", i + 1)),
                [link, q.clone()],
            )?;
        }
        layouter.constrain_instance(link.cell(), cfg.instance, 0)
    }
}
