//! The training file: the one file the agent edits.
//!
//! A GPT (value embeddings, rotary + QK-norm, sliding windows, relu² MLP, softcapped logits), the MuonAdamW
//! optimizer, and a training loop that runs for a fixed wall-clock budget. Everything fixed (data, tokenizer,
//! profile, budget) comes from `autoresearch_harness`; FlashAttention, the softcapped loss and bf16 autocast from
//! `autoresearch_ops`. Run it with `autoresearch train`. Change anything here, within the contract:
//! - `train(training)` trains and returns the model; `build(training)` makes the same model untrained.
//! - The harness evaluates: it loads the trained weights (`Model::state`) into a model from `build` and takes
//!   the cross-entropy of `Model::logits` over the validation rows itself. The logits must be causal (checked).
//! - Training and evaluation judge one function: before it saves the model, the harness checks on a few training
//!   rows that the training's loss (`Trainable::per_token_loss`) is the cross-entropy of `Model::logits`.
//! - Training runs in a sandbox: the validation data and earlier experiments' files are unreadable, only the
//!   training's own hand-over folder (its temporary files with it) is writable, the network is closed. One clock:
//!   `train` must return by `training.seconds_left()` (the budget plus the profile's fixed allowance for start-up,
//!   less the hand-over reserve, from the phase's start); every step counts, warm-up included. Returning later is
//!   a crash, `over time`.
//! - `training.progress(step, loss)` after each step is how the dashboard follows the training.
//!
//! Each parameter is declared once, where it is built ([`Params::add`]), with the optimizer group that trains it.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context, Result};
use autoresearch_evaluate::{Model, Trainable, Trained};
use autoresearch_harness::dataloader::Batch;
use autoresearch_harness::device::{mfu_unknown_note, peak_bf16_flops};
use autoresearch_harness::handover::TrainingReport;
use autoresearch_harness::profile::Training;
use tch::{Device, Kind, Tensor};

// ---------------------------------------------------------------------------------------------------------
// Hyperparameters (edit freely): one set per profile
// ---------------------------------------------------------------------------------------------------------

pub struct Hyper {
    /// Transformer layers.
    pub depth: i64,
    /// model_dim = depth × aspect_ratio, rounded up to a multiple of head_dim.
    pub aspect_ratio: i64,
    pub head_dim: i64,
    /// Attention window per layer, repeating: S = half the sequence, L = all of it (the last layer is L).
    pub window_pattern: &'static str,
    /// Tokens per optimizer step; gradients accumulate over device batches to reach it.
    pub total_batch_size: i64,
    /// Sequences per forward/backward pass.
    pub device_batch_size: i64,
    pub opt: OptimizerConfig,
    /// Fractions of the training's time (until `train` must return): LR warmup at the start, linear warmdown at
    /// the end to final_lr_frac.
    pub warmup_ratio: f64,
    pub warmdown_ratio: f64,
    pub final_lr_frac: f64,
}

#[derive(Clone, Debug)]
pub struct OptimizerConfig {
    /// wte and value embeddings (AdamW, scaled by (dim/768)^-0.5).
    pub embedding_lr: f64,
    /// lm_head (AdamW, scaled by (dim/768)^-0.5).
    pub unembedding_lr: f64,
    /// Block matrices (Muon).
    pub matrix_lr: f64,
    /// x0 lambdas; resid lambdas get 1% of it (AdamW).
    pub scalar_lr: f64,
    /// Muon's cautious weight decay, decayed linearly to 0 over the run.
    pub weight_decay: f64,
    pub adam_betas: (f64, f64),
}

/// The original's optimizer settings, shared by both profiles below.
pub const OPTIMIZER: OptimizerConfig = OptimizerConfig {
    embedding_lr: 0.6,
    unembedding_lr: 0.004,
    matrix_lr: 0.04,
    scalar_lr: 0.5,
    weight_decay: 0.2,
    adam_betas: (0.8, 0.95),
};

/// The original's baseline, for one H100-class GPU (~50M parameters).
pub const H100: Hyper = Hyper {
    depth: 8,
    aspect_ratio: 64,
    head_dim: 128,
    window_pattern: "SSSL",
    total_batch_size: 1 << 19,
    device_batch_size: 128,
    opt: OPTIMIZER,
    warmup_ratio: 0.0,
    warmdown_ratio: 0.5,
    final_lr_frac: 0.0,
};

/// For CPUs and laptops: the baseline scaled down (1.84M parameters at vocab 2048).
pub const SMALL: Hyper =
    Hyper { depth: 4, aspect_ratio: 32, head_dim: 64, total_batch_size: 1 << 13, device_batch_size: 16, ..H100 };

/// The hyperparameters of a profile; a profile without a set here is an error.
pub fn hyper_for(profile: &str) -> Result<&'static Hyper> {
    match profile {
        "h100" => Ok(&H100),
        "small" => Ok(&SMALL),
        other => bail!("no hyperparameters for profile {other:?} in train/train.rs: add a set (e.g. `..H100`)"),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct GptConfig {
    pub sequence_len: i64,
    pub vocab_size: i64,
    pub n_layer: i64,
    pub n_head: i64,
    pub n_kv_head: i64,
    pub n_embd: i64,
    pub window_pattern: String,
}

/// Channels of x that feed the value-embedding gate.
const VE_GATE_CHANNELS: i64 = 32;
/// Logits are squashed to (−SOFTCAP, SOFTCAP), in [`Gpt::logits`] (evaluated) and [`Gpt::per_token_loss`] (trained).
const SOFTCAP: f64 = 15.0;
const ROTARY_BASE: f64 = 10000.0;

impl GptConfig {
    pub fn from_hyper(h: &Hyper, vocab_size: i64, sequence_len: i64) -> GptConfig {
        let n_embd = (h.depth * h.aspect_ratio + h.head_dim - 1) / h.head_dim * h.head_dim;
        let n_head = n_embd / h.head_dim;
        GptConfig {
            sequence_len,
            vocab_size,
            n_layer: h.depth,
            n_head,
            n_kv_head: n_head,
            n_embd,
            window_pattern: h.window_pattern.to_string(),
        }
    }

    pub fn head_dim(&self) -> i64 {
        self.n_embd / self.n_head
    }

    /// How far back each layer's queries see: T for 'L', T/2 for 'S'; the last layer always sees all.
    pub fn window_sizes(&self) -> Vec<i64> {
        let pattern: Vec<char> = self.window_pattern.chars().collect();
        (0..self.n_layer)
            .map(|i| {
                let long = i == self.n_layer - 1 || pattern[i as usize % pattern.len()] == 'L';
                if long {
                    self.sequence_len
                } else {
                    self.sequence_len / 2
                }
            })
            .collect()
    }

    /// Value embeddings sit on alternating layers, always including the last.
    pub fn has_value_embedding(&self, layer: i64) -> bool {
        layer % 2 == (self.n_layer - 1) % 2
    }
}

/// Which optimizer group trains a parameter: given where the parameter is built (see [`Params::add`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// wte and value embeddings: AdamW at `embedding_lr`.
    Embedding,
    /// lm_head: AdamW at `unembedding_lr`.
    Unembedding,
    /// Block matrices: Muon at `matrix_lr`, stacked by shape.
    Matrix,
    /// resid_lambdas: AdamW at 1% of `scalar_lr`.
    ResidScalars,
    /// x0_lambdas: AdamW at `scalar_lr`, betas (0.96, 0.95).
    X0Scalars,
}

/// One trainable tensor of the model.
pub struct Param {
    /// The original's name: checkpoints and the golden files use it.
    pub name: String,
    pub group: Group,
    pub tensor: Tensor,
}

/// The model's parameters, each registered once, where it is built: loading, saving, counting and the
/// optimizer's groups all read this list.
#[derive(Default)]
pub struct Params(Vec<Param>);

impl Params {
    /// Registers `init` as a trainable parameter named `name`, trained by `group`; returns it (the same storage).
    pub fn add(&mut self, name: String, group: Group, init: Tensor) -> Tensor {
        let tensor = init.set_requires_grad(true);
        self.0.push(Param { name, group, tensor: tensor.shallow_clone() });
        tensor
    }

    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.0.iter()
    }

    /// Elements of the parameters in `groups`.
    pub fn numel(&self, groups: &[Group]) -> usize {
        self.0.iter().filter(|p| groups.contains(&p.group)).map(|p| p.tensor.numel()).sum()
    }
}

struct Block {
    c_q: Tensor,
    c_k: Tensor,
    c_v: Tensor,
    attn_proj: Tensor,
    ve_gate: Option<Tensor>,
    c_fc: Tensor,
    mlp_proj: Tensor,
}

impl Block {
    /// Block `i`, initialised as the original does. Its parameters are named as in the original under
    /// `transformer.h.{i}`, and all are matrices that Muon trains: a new one is a field and a line here.
    fn new(params: &mut Params, config: &GptConfig, i: i64, device: Device) -> Block {
        let d = config.n_embd;
        let s = 3f64.sqrt() / (d as f64).sqrt();
        let mut matrix =
            |name: &str, init: Tensor| params.add(format!("transformer.h.{i}.{name}"), Group::Matrix, init);
        let uniform = |rows: i64, cols: i64| Tensor::empty([rows, cols], (Kind::Float, device)).uniform_(-s, s);
        let zeros = |rows: i64, cols: i64| Tensor::zeros([rows, cols], (Kind::Float, device));
        let kv_dim = config.n_kv_head * config.head_dim();
        Block {
            c_q: matrix("attn.c_q.weight", uniform(config.n_head * config.head_dim(), d)),
            c_k: matrix("attn.c_k.weight", uniform(kv_dim, d)),
            c_v: matrix("attn.c_v.weight", uniform(kv_dim, d)),
            attn_proj: matrix("attn.c_proj.weight", zeros(d, d)),
            ve_gate: config
                .has_value_embedding(i)
                .then(|| matrix("attn.ve_gate.weight", zeros(config.n_kv_head, VE_GATE_CHANNELS))),
            c_fc: matrix("mlp.c_fc.weight", uniform(4 * d, d)),
            mlp_proj: matrix("mlp.c_proj.weight", zeros(d, 4 * d)),
        }
    }
}

pub struct Gpt {
    pub config: GptConfig,
    pub params: Params,
    wte: Tensor,
    blocks: Vec<Block>,
    value_embeds: Vec<Option<Tensor>>,
    lm_head: Tensor,
    resid_lambdas: Tensor,
    x0_lambdas: Tensor,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

fn rms_norm(x: &Tensor) -> Tensor {
    // eps: the dtype's machine epsilon (libtorch's default).
    x.rms_norm([*x.size().last().unwrap()], None::<Tensor>, None)
}

impl Gpt {
    /// A model initialised as the original does. On CUDA the embeddings are bf16.
    pub fn new(config: GptConfig, device: Device) -> Gpt {
        let (d, v) = (config.n_embd, config.vocab_size);
        let f32 = (Kind::Float, device);
        let emb_kind = if device.is_cuda() { Kind::BFloat16 } else { Kind::Float };
        let s = 3f64.sqrt() / (d as f64).sqrt();
        let kv_dim = config.n_kv_head * config.head_dim();
        let mut params = Params::default();
        let blocks = (0..config.n_layer).map(|i| Block::new(&mut params, &config, i, device)).collect();
        let value_embeds = (0..config.n_layer)
            .map(|i| {
                let init = || Tensor::empty([v, kv_dim], f32).uniform_(-s, s).to_kind(emb_kind);
                config
                    .has_value_embedding(i)
                    .then(|| params.add(format!("value_embeds.{i}.weight"), Group::Embedding, init()))
            })
            .collect();
        let wte =
            params.add("transformer.wte.weight".into(), Group::Embedding, Tensor::randn([v, d], f32).to_kind(emb_kind));
        let lm_head = params.add("lm_head.weight".into(), Group::Unembedding, Tensor::randn([v, d], f32) * 0.001);
        let n = config.n_layer;
        let resid_lambdas = params.add("resid_lambdas".into(), Group::ResidScalars, Tensor::ones([n], f32));
        let x0_lambdas = params.add("x0_lambdas".into(), Group::X0Scalars, Tensor::full([n], 0.1, f32));
        let (cos, sin) = rotary_tables(config.sequence_len * 10, config.head_dim(), emb_kind, device);
        Gpt { config, params, wte, blocks, value_embeds, lm_head, resid_lambdas, x0_lambdas, cos, sin, device }
    }

    /// Every parameter under the original's name, in the order they were built.
    pub fn named_parameters(&self) -> Vec<(String, &Tensor)> {
        self.params.iter().map(|p| (p.name.clone(), &p.tensor)).collect()
    }

    /// Copies weights in by the original's names; every parameter must be given, with its shape.
    pub fn load(&self, tensors: &[(String, Tensor)]) -> Result<()> {
        let given: BTreeMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        tch::no_grad(|| {
            for p in self.params.iter() {
                let src = given.get(p.name.as_str()).with_context(|| format!("no weights for {}", p.name))?;
                let (name, size) = (&p.name, p.tensor.size());
                ensure!(src.size() == size, "{name}: shape {:?}, the model has {size:?}", src.size());
                p.tensor.shallow_clone().copy_(src);
            }
            Ok(())
        })
    }

    pub fn num_params(&self) -> i64 {
        self.params.iter().map(|p| p.tensor.numel() as i64).sum()
    }

    /// Training FLOPs per token: 6 × the parameters in matrix products (all but the embeddings and the
    /// λ scalars), plus attention, 12 × heads × head_dim × the keys each query sees, per layer.
    pub fn flops_per_token(&self) -> f64 {
        let dense = self.params.numel(&[Group::Unembedding, Group::Matrix]) as f64;
        let c = &self.config;
        let attention: f64 =
            c.window_sizes().iter().map(|&w| 12.0 * (c.n_head * c.head_dim() * w.min(c.sequence_len)) as f64).sum();
        6.0 * dense + attention
    }

    /// Logits (B, T, vocab) in float32, softcapped: what the harness evaluates.
    pub fn logits(&self, idx: &Tensor) -> Tensor {
        autoresearch_ops::softcap(&self.raw_logits(idx), SOFTCAP)
    }

    /// lm_head's output before the softcap (bf16 under autocast).
    fn raw_logits(&self, idx: &Tensor) -> Tensor {
        let t = idx.size()[1];
        let mut x = rms_norm(&Tensor::embedding(&self.wte, idx, -1, false, false));
        let x0 = x.shallow_clone();
        let (cos, sin) = (self.cos.narrow(1, 0, t), self.sin.narrow(1, 0, t));
        for (i, (block, window)) in self.blocks.iter().zip(self.config.window_sizes()).enumerate() {
            x = self.resid_lambdas.get(i as i64) * &x + self.x0_lambdas.get(i as i64) * &x0;
            let ve = self.value_embeds[i].as_ref().map(|w| Tensor::embedding(w, idx, -1, false, false));
            x = &x + self.attention(block, &rms_norm(&x), ve.as_ref(), &cos, &sin, window);
            let h = rms_norm(&x).linear(&block.c_fc, None::<Tensor>).relu();
            // h·h rather than square(): autocast runs square (pow) in float32; the bf16 product is the same.
            x = &x + (&h * &h).linear(&block.mlp_proj, None::<Tensor>);
        }
        rms_norm(&x).linear(&self.lm_head, None::<Tensor>)
    }

    fn attention(&self, b: &Block, x: &Tensor, ve: Option<&Tensor>, cos: &Tensor, sin: &Tensor, window: i64) -> Tensor {
        let (bsz, t, _) = x.size3().unwrap();
        let (h, kvh, hd) = (self.config.n_head, self.config.n_kv_head, self.config.head_dim());
        let q = x.linear(&b.c_q, None::<Tensor>).view([bsz, t, h, hd]);
        let k = x.linear(&b.c_k, None::<Tensor>).view([bsz, t, kvh, hd]);
        let mut v = x.linear(&b.c_v, None::<Tensor>).view([bsz, t, kvh, hd]);
        if let (Some(ve), Some(gate)) = (ve, &b.ve_gate) {
            let gate = x.narrow(-1, 0, VE_GATE_CHANNELS).linear(gate, None::<Tensor>).sigmoid() * 2.0;
            v += gate.unsqueeze(-1) * ve.view([bsz, t, kvh, hd]);
        }
        let q = rms_norm(&apply_rotary(&q, cos, sin));
        let k = rms_norm(&apply_rotary(&k, cos, sin));
        let y = autoresearch_ops::attention(&q, &k, &v, window);
        y.contiguous().view([bsz, t, h * hd]).linear(&b.attn_proj, None::<Tensor>)
    }

    /// Mean cross-entropy of predicting `targets`: the training's loss.
    pub fn loss(&self, idx: &Tensor, targets: &Tensor) -> Tensor {
        self.per_token_loss(idx, targets).mean(Kind::Float)
    }

    /// Cross-entropy of each target (B, T): that of [`Gpt::logits`], computed from the logits before the
    /// softcap (on CUDA one fused kernel, which makes no float32 copy of them). The harness checks that the two
    /// agree: change the softcap in both or neither.
    pub fn per_token_loss(&self, idx: &Tensor, targets: &Tensor) -> Tensor {
        let logits = self.raw_logits(idx).view([-1, self.config.vocab_size]);
        autoresearch_ops::softcap_cross_entropy(&logits, &targets.view([-1]), SOFTCAP).view_as(targets)
    }
}

/// cos and sin of the rotary angles, (1, len, 1, head_dim / 2).
fn rotary_tables(len: i64, head_dim: i64, kind: Kind, device: Device) -> (Tensor, Tensor) {
    let f32 = (Kind::Float, device);
    let channels = Tensor::arange_start_step(0, head_dim, 2, f32) / head_dim as f64;
    let inv_freq = (channels * ROTARY_BASE.ln()).exp().reciprocal();
    let freqs = Tensor::arange(len, f32).outer(&inv_freq);
    let shape = [1, len, 1, head_dim / 2];
    (freqs.cos().to_kind(kind).view(shape), freqs.sin().to_kind(kind).view(shape))
}

/// Rotates the two halves of each head: (x1, x2) -> (x1·cos + x2·sin, −x1·sin + x2·cos).
fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let (x1, x2) = (x.narrow(3, 0, half), x.narrow(3, half, half));
    Tensor::cat(&[&x1 * cos + &x2 * sin, -(&x1 * sin) + &x2 * cos], 3)
}

// ---------------------------------------------------------------------------------------------------------
// Optimizer: AdamW for embeddings, lm_head and scalars; Muon (polar express + NorMuon) for block matrices
// ---------------------------------------------------------------------------------------------------------

const ADAM_EPS: f64 = 1e-10;
const MUON_BETA2: f64 = 0.95;
const POLAR_EXPRESS: [(f64, f64, f64); 5] = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
];

struct AdamGroup {
    params: Vec<Tensor>,
    lr: f64,
    betas: (f64, f64),
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
}

/// Matrices of one shape, updated together as a stack (N, rows, cols).
struct MuonGroup {
    params: Vec<Tensor>,
    lr: f64,
    momentum: Tensor,
    second_moment: Tensor,
    /// NorMuon's reduction dim: the last if rows ≥ cols, else the second-to-last.
    red_dim: i64,
}

pub struct MuonAdamW {
    adam: Vec<AdamGroup>,
    muon: Vec<MuonGroup>,
    step: i32,
    /// Precision of the orthogonalisation: bf16 on the GPU (the original's); float32 on the CPU, where
    /// bf16 matrix products are ten times slower than float32 ones.
    pub polar_kind: Kind,
}

impl MuonAdamW {
    pub fn new(model: &Gpt, cfg: &OptimizerConfig) -> MuonAdamW {
        let scale = (model.config.n_embd as f64 / 768.0).powf(-0.5);
        let adam = |params: Vec<&Tensor>, lr: f64, betas: (f64, f64)| AdamGroup {
            exp_avg: params.iter().map(|p| p.zeros_like()).collect(),
            exp_avg_sq: params.iter().map(|p| p.zeros_like()).collect(),
            params: params.into_iter().map(Tensor::shallow_clone).collect(),
            lr,
            betas,
        };
        // Every parameter lands in exactly one group, the one it was built with; a Muon parameter must be a
        // matrix.
        let (mut unembedding, mut embedding, mut resid, mut x0) = (vec![], vec![], vec![], vec![]);
        let mut by_shape: BTreeMap<Vec<i64>, Vec<Tensor>> = BTreeMap::new();
        for p in model.params.iter() {
            match p.group {
                Group::Unembedding => unembedding.push(&p.tensor),
                Group::Embedding => embedding.push(&p.tensor),
                Group::ResidScalars => resid.push(&p.tensor),
                Group::X0Scalars => x0.push(&p.tensor),
                Group::Matrix => {
                    assert!(
                        p.tensor.dim() == 2,
                        "parameter {} is in Muon's group but has {} dimensions: Muon trains matrices (give it an \
                         AdamW group where it is built)",
                        p.name,
                        p.tensor.dim()
                    );
                    by_shape.entry(p.tensor.size()).or_default().push(p.tensor.shallow_clone())
                }
            }
        }
        let adam = vec![
            adam(unembedding, cfg.unembedding_lr * scale, cfg.adam_betas),
            adam(embedding, cfg.embedding_lr * scale, cfg.adam_betas),
            adam(resid, cfg.scalar_lr * 0.01, cfg.adam_betas),
            adam(x0, cfg.scalar_lr, (0.96, 0.95)),
        ];
        let muon = by_shape
            .into_iter()
            .map(|(shape, params)| {
                let (n, r, c) = (params.len() as i64, shape[0], shape[1]);
                let red_dim = if r >= c { -1 } else { -2 };
                let moment_shape = if r >= c { [n, r, 1] } else { [n, 1, c] };
                let opts = (Kind::Float, params[0].device());
                MuonGroup {
                    lr: cfg.matrix_lr * (r as f64 / c as f64).max(1.0).sqrt(),
                    momentum: Tensor::zeros([n, r, c], opts),
                    second_moment: Tensor::zeros(moment_shape, opts),
                    red_dim,
                    params,
                }
            })
            .collect();
        let polar_kind = if model.device.is_cuda() { Kind::BFloat16 } else { Kind::Float };
        let opt = MuonAdamW { adam, muon, step: 0, polar_kind };
        let grouped = opt.adam.iter().map(|g| g.params.len()).sum::<usize>()
            + opt.muon.iter().map(|g| g.params.len()).sum::<usize>();
        assert_eq!(grouped, model.params.iter().count(), "every parameter is in exactly one optimizer group");
        opt
    }

    /// One update from the accumulated gradients: learning rates × `lr_mult`, Muon momentum `momentum`,
    /// Muon weight decay `weight_decay`.
    pub fn step(&mut self, lr_mult: f64, momentum: f64, weight_decay: f64) {
        self.step += 1;
        let _guard = tch::no_grad_guard();
        for g in &mut self.adam {
            let (b1, b2) = g.betas;
            let lr = g.lr * lr_mult;
            let (bias1, bias2) = (1.0 - b1.powi(self.step), 1.0 - b2.powi(self.step));
            for ((p, m), v) in g.params.iter_mut().zip(&mut g.exp_avg).zip(&mut g.exp_avg_sq) {
                let grad = p.grad();
                let _ = m.lerp_(&grad, 1.0 - b1);
                let _ = v.lerp_(&grad.square(), 1.0 - b2);
                let denom = (&*v / bias2).sqrt() + ADAM_EPS;
                *p -= &*m / denom * (lr / bias1);
            }
        }
        for g in &mut self.muon {
            let grads = Tensor::stack(&g.params.iter().map(Tensor::grad).collect::<Vec<_>>(), 0);
            let _ = g.momentum.lerp_(&grads, 1.0 - momentum);
            let update = orthogonalize(&grads.lerp(&g.momentum, momentum), self.polar_kind);
            let update = normuon(update, &mut g.second_moment, g.red_dim);
            let mut stacked = Tensor::stack(&g.params, 0);
            // Cautious weight decay: only where the update and the weight agree in sign.
            let agree = (&update * &stacked).ge(0.0).to_kind(Kind::Float);
            let lr = g.lr * lr_mult;
            stacked -= update * lr + &stacked * &agree * (lr * weight_decay);
            for (i, p) in g.params.iter_mut().enumerate() {
                p.copy_(&stacked.get(i as i64));
            }
        }
    }

    pub fn zero_grad(&mut self) {
        for p in
            self.adam.iter_mut().flat_map(|g| &mut g.params).chain(self.muon.iter_mut().flat_map(|g| &mut g.params))
        {
            p.zero_grad();
        }
    }
}

/// Nearest semi-orthogonal matrices: normalise, then 5 "polar express" iterations, in `kind`.
fn orthogonalize(g: &Tensor, kind: Kind) -> Tensor {
    let mut x = g.to_kind(kind);
    x = &x / (x.norm_scalaropt_dim(2, [-2, -1], true) * 1.02 + 1e-6);
    let tall = g.size()[1] > g.size()[2];
    for (a, b, c) in POLAR_EXPRESS {
        if tall {
            let m = x.mt().matmul(&x);
            x = &x * a + x.matmul(&(&m * b + m.matmul(&m) * c));
        } else {
            let m = x.matmul(&x.mt());
            x = &x * a + (&m * b + m.matmul(&m) * c).matmul(&x);
        }
    }
    x
}

/// NorMuon: rescales each row (or column) by a running second moment, keeping the update's overall norm.
fn normuon(x: Tensor, second_moment: &mut Tensor, red_dim: i64) -> Tensor {
    let x = x.to_kind(Kind::Float);
    let n = x.size()[(x.dim() as i64 + red_dim) as usize] as f64;
    let v = x.square().mean_dim(&[red_dim][..], true, None);
    let norm = (v.sum_dim_intlist(&[-2, -1][..], true, None) * n).sqrt();
    let _ = second_moment.lerp_(&v, 1.0 - MUON_BETA2);
    let step = second_moment.clamp_min(1e-10).rsqrt();
    let new_norm = (&v * n * step.square()).sum_dim_intlist(&[-2, -1][..], true, None).sqrt();
    x * step * (norm / new_norm.clamp_min(1e-10))
}

// ---------------------------------------------------------------------------------------------------------
// Schedules, by progress = time in the loop / the time it has (until `train` must return)
// ---------------------------------------------------------------------------------------------------------

pub fn lr_multiplier(h: &Hyper, progress: f64) -> f64 {
    if progress < h.warmup_ratio {
        progress / h.warmup_ratio
    } else if progress < 1.0 - h.warmdown_ratio {
        1.0
    } else {
        let cooldown = (1.0 - progress) / h.warmdown_ratio;
        cooldown + (1.0 - cooldown) * h.final_lr_frac
    }
}

pub fn muon_momentum(step: usize) -> f64 {
    let frac = (step as f64 / 300.0).min(1.0);
    (1.0 - frac) * 0.85 + frac * 0.95
}

pub fn weight_decay(h: &Hyper, progress: f64) -> f64 {
    h.opt.weight_decay * (1.0 - progress)
}

// ---------------------------------------------------------------------------------------------------------
// Training
// ---------------------------------------------------------------------------------------------------------

/// Input and target tensors of a batch, on the device.
pub fn batch_tensors(batch: &Batch, device: Device) -> (Tensor, Tensor) {
    let shape = [batch.rows as i64, batch.cols as i64];
    let x = Tensor::from_slice(&batch.inputs).view(shape).to_device(device);
    let y = Tensor::from_slice(&batch.targets).view(shape).to_device(device);
    (x, y)
}

/// Steps 0 ..= this one are warm-up (kernels compiled, memory allocated): not timed for MFU, as in the original.
/// They count for the clock like any other step.
const WARMUP_STEPS: usize = 10;
/// A step starts only where the time left holds this many of the slowest recent steps: a step on a busy machine
/// may take longer than the last ones, and `train` must return in time.
const STEP_MARGIN: f64 = 2.0;

/// Durations of the last 10 steps (or micro-batches).
#[derive(Default)]
struct Recent(std::collections::VecDeque<f64>);

impl Recent {
    fn push(&mut self, seconds: f64) {
        self.0.push_back(seconds);
        if self.0.len() > 10 {
            self.0.pop_front();
        }
    }

    fn slowest(&self) -> f64 {
        self.0.iter().cloned().fold(0.0, f64::max)
    }
}

/// The device, set up as the original does (bf16 autocast and TF32 on CUDA).
fn device() -> Device {
    let device = Device::cuda_if_available();
    if device.is_cuda() {
        autoresearch_ops::use_bf16_autocast();
        autoresearch_ops::allow_tf32();
    }
    device
}

/// The model of this profile, initialised: the harness calls this to rebuild the trained model from its
/// checkpoint for the evaluation.
pub fn build(training: &Training) -> Result<Gpt> {
    let h = hyper_for(&training.profile().name)?;
    let config = GptConfig::from_hyper(h, training.profile().vocab_size as i64, training.profile().max_seq_len as i64);
    Ok(Gpt::new(config, device()))
}

/// What the harness evaluates: the final logits, softcapped, under autocast on CUDA.
impl Model for Gpt {
    fn logits(&self, inputs: &Tensor) -> Tensor {
        autoresearch_ops::autocast(self.device.is_cuda(), || Gpt::logits(self, inputs))
    }

    fn device(&self) -> Device {
        self.device
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.named_parameters().into_iter().map(|(n, p)| (n, p.shallow_clone())).collect()
    }

    fn load_state(&self, tensors: &[(String, Tensor)]) -> Result<()> {
        self.load(tensors)
    }
}

/// The loss `train` minimises, as the harness checks it against `logits` before it saves the model.
impl Trainable for Gpt {
    fn per_token_loss(&self, inputs: &Tensor, targets: &Tensor) -> Tensor {
        autoresearch_ops::autocast(self.device.is_cuda(), || Gpt::per_token_loss(self, inputs, targets))
    }
}

/// Trains a model for the time budget; the harness then evaluates it.
pub fn train(training: &Training) -> Result<Trained<Gpt>> {
    let profile = training.profile().clone();
    let h = hyper_for(&profile.name)?;
    tch::manual_seed(training.seed as i64);
    let model = build(training)?;
    let (config, device) = (model.config.clone(), model.device);
    let device_name = autoresearch_evaluate::device_name(device);
    let t = config.sequence_len;
    ensure!(
        h.total_batch_size % (h.device_batch_size * t) == 0,
        "total_batch_size {} is not a multiple of device_batch_size × sequence length = {}×{t}",
        h.total_batch_size,
        h.device_batch_size
    );
    let flops_per_token = model.flops_per_token();
    println!(
        "profile {} | device {device_name} | seed {} | budget {}s",
        profile.name, training.seed, training.time_budget
    );
    println!("{config:?}");
    if let Some(note) = mfu_unknown_note(&device_name) {
        println!("{note}");
    }

    let mut opt = MuonAdamW::new(&model, &h.opt);
    let cuda = device.is_cuda();
    // The largest device batch up to the configured one whose step fits in memory (halved on out of memory;
    // gradient accumulation keeps the total), tried once per device and model shape.
    let key = format!("{device_name} | {config:?} | device_batch_size {}", h.device_batch_size);
    let b = training.fit_device_batch(&key, h.device_batch_size as usize, |rows| {
        let x = Tensor::zeros([rows as i64, t], (Kind::Int64, device));
        autoresearch_ops::autocast(cuda, || model.loss(&x, &x)).backward();
        opt.zero_grad();
        Ok(())
    })? as i64;
    let grad_accum = h.total_batch_size / (b * t);
    println!(
        "parameters: {:.2}M | FLOPs/token: {:.3e} | tokens/step: {} | grad accumulation: {grad_accum}",
        model.num_params() as f64 / 1e6,
        flops_per_token,
        h.total_batch_size
    );

    let mut loader = training.train_loader(b as usize)?;
    let mut batch = loader.next_batch()?;
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64)
        }
    };

    // The schedule (LR warmdown, weight decay) runs over the time until `train` must return.
    let span = training.seconds_left().max(1e-3);
    println!("training for {span:.1}s (until `train` must return)");
    let (mut training_time, mut timed_time) = (0.0, 0.0);
    // The last 10 steps' and micro-batches' seconds.
    let (mut recent, mut recent_micro) = (Recent::default(), Recent::default());
    let mut smooth_loss = 0.0;
    let mut step = 0usize;
    let loop_start = std::time::Instant::now();
    'steps: loop {
        if training.seconds_left() <= STEP_MARGIN * recent.slowest() {
            break;
        }
        sync();
        let t0 = std::time::Instant::now();
        let mut train_loss = Tensor::zeros([], (Kind::Float, device));
        for _ in 0..grad_accum {
            // Where even a micro-batch no longer fits (a machine that slowed down, a slow first step), the step
            // is dropped, its gradients with it. (On CUDA micro-batches are timed as launched: the step's check.)
            if training.seconds_left() <= STEP_MARGIN * recent_micro.slowest() {
                opt.zero_grad();
                break 'steps;
            }
            let m0 = std::time::Instant::now();
            let (x, y) = batch_tensors(&batch, device);
            let loss = autoresearch_ops::autocast(cuda, || model.loss(&x, &y));
            train_loss = loss.detach();
            (loss / grad_accum as f64).backward();
            batch = loader.next_batch()?;
            recent_micro.push(m0.elapsed().as_secs_f64());
        }
        let progress = (loop_start.elapsed().as_secs_f64() / span).min(1.0);
        let lrm = lr_multiplier(h, progress);
        opt.step(lrm, muon_momentum(step), weight_decay(h, progress));
        opt.zero_grad();
        let loss = train_loss.double_value(&[]);
        if loss.is_nan() || loss > 100.0 {
            bail!("FAIL: loss {loss} at step {step}");
        }
        sync();
        let dt = t0.elapsed().as_secs_f64();
        training_time += dt;
        if step > WARMUP_STEPS {
            timed_time += dt;
        }
        recent.push(dt);
        smooth_loss = 0.9 * smooth_loss + 0.1 * loss;
        let debiased = smooth_loss / (1.0 - 0.9f64.powi(step as i32 + 1));
        let tok_per_sec = h.total_batch_size as f64 / dt;
        let mfu = peak_bf16_flops(&device_name)
            .map_or("n/a".into(), |p| format!("{:.1}%", 100.0 * flops_per_token * tok_per_sec / p));
        print!(
            "\rstep {step:05} ({:.1}%) | loss: {debiased:.6} | lrm: {lrm:.2} | dt: {:.0}ms | tok/sec: {tok_per_sec:.0} | mfu: {mfu} | epoch: {} | remaining: {:.0}s    ",
            100.0 * progress,
            dt * 1000.0,
            batch.epoch,
            training.seconds_left().max(0.0)
        );
        use std::io::Write as _;
        std::io::stdout().flush()?;
        // For the dashboard (the line above is for people): the harness writes it to a file a few times a second.
        training.progress(step as u64, debiased);
        step += 1;
    }
    println!();
    let warmup = training_time - timed_time;
    println!(
        "loop: {step} steps in {:.1}s ({warmup:.1}s of them in the first {} steps, not counted for MFU)",
        loop_start.elapsed().as_secs_f64(),
        (WARMUP_STEPS + 1).min(step)
    );
    // As the original counts for MFU: steps after the first WARMUP_STEPS.
    let timed_steps = step.saturating_sub(WARMUP_STEPS) as u64;
    let report = TrainingReport {
        steps: step as u64,
        tokens: step as u64 * h.total_batch_size as u64,
        timed_seconds: timed_time,
        timed_tokens: timed_steps * h.total_batch_size as u64,
        flops_per_token,
        depth: config.n_layer as u64,
    };
    Ok(Trained { model, report })
}
