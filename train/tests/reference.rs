//! The training file's model and optimizer against the original's golden files, in float32 on the CPU.
//! Tolerances as the issue sets them (tests/golden/README.md says why).

use std::collections::BTreeMap;
use std::sync::Arc;

use autoresearch_evaluate::evaluation::{evaluate, ValRows};
use autoresearch_evaluate::{causality, loss_check, probes, Model};
use autoresearch_golden::Reference;
use autoresearch_harness::dataloader::{DataLoader, LoaderOptions};
use autoresearch_harness::shards::{split_files, Split};
use autoresearch_harness::tokenizer::{parse_ranks, Tokenizer};
use tch::{Device, Kind, Tensor};
use train::{muon_momentum, Gpt, GptConfig, Group, MuonAdamW, OptimizerConfig};

mod common;
use common::rel_err;

fn config(r: &Reference) -> GptConfig {
    let config = common::config(r);
    let windows: Vec<i64> = serde_json::from_value(r.get(&["model", "window_sizes_left"]).clone()).unwrap();
    assert_eq!(config.window_sizes(), windows);
    config
}

fn optimizer_config(r: &Reference) -> OptimizerConfig {
    let hp = |k: &str| r.f64(&["optimizer", "hyperparameters", k]);
    let betas = r.get(&["optimizer", "hyperparameters", "adam_betas"]).as_array().unwrap();
    OptimizerConfig {
        embedding_lr: hp("embedding_lr"),
        unembedding_lr: hp("unembedding_lr"),
        matrix_lr: hp("matrix_lr"),
        scalar_lr: hp("scalar_lr"),
        weight_decay: hp("weight_decay"),
        adam_betas: (betas[0].as_f64().unwrap(), betas[1].as_f64().unwrap()),
    }
}

fn load(r: &Reference, rel: &str) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(r.path(rel)).unwrap().into_iter().collect()
}

fn reference_model(r: &Reference) -> Gpt {
    let model = Gpt::new(config(r), Device::Cpu);
    let weights: Vec<(String, Tensor)> = Tensor::read_safetensors(r.path("model/random.safetensors")).unwrap();
    model.load(&weights).unwrap();
    model
}

/// Batch `split.k` of the golden dataloader file: (inputs, targets).
fn golden_batch(r: &Reference, split: &str, k: usize) -> (Tensor, Tensor) {
    let (b, t) = (r.usize(&["dataloader", "B"]), r.usize(&["dataloader", "T"]));
    let batches = load(r, &format!("dataloader/batches_B{b}_T{t}.safetensors"));
    let get = |part: &str| batches[&format!("{split}.{k}.{part}")].shallow_clone();
    (get("inputs"), get("targets"))
}

#[test]
fn per_token_losses_and_every_gradient_equal_the_reference() {
    let r = Reference::load().unwrap();
    let model = reference_model(&r);
    let golden = load(&r, "model/forward_backward.safetensors");
    let batch = r.get(&["forward_backward", "batch"]).as_str().unwrap().trim_start_matches("dataloader ").to_string();
    let (split, k) = batch.split_once('.').unwrap();
    let (x, y) = golden_batch(&r, split, k.parse().unwrap());

    let per_token = model.per_token_loss(&x, &y);
    let err = rel_err(&per_token, &golden["per_token_loss"]);
    assert!(err < 1e-5, "per-token loss: relative error {err:e}");

    let loss = model.loss(&x, &y);
    let want = r.f64(&["forward_backward", "loss_mean"]);
    assert!((loss.double_value(&[]) - want).abs() / want < 1e-5, "loss {} vs {want}", loss.double_value(&[]));
    loss.backward();
    let params = model.named_parameters();
    assert_eq!(params.len() + 2, golden.len(), "a gradient for every parameter");
    let mut worst: f64 = 0.0;
    for (name, p) in params {
        let err = rel_err(&p.grad(), &golden[&format!("grad.{name}")]);
        assert!(err < 1e-5, "grad of {name}: relative error {err:e}");
        worst = worst.max(err);
    }
    eprintln!(
        "per-token loss relative error {:e}, worst gradient {worst:e}",
        rel_err(&per_token, &golden["per_token_loss"])
    );
}

#[test]
fn two_steps_on_fixed_gradients_equal_the_reference() {
    // bf16 orthogonalisation as the original (and our GPU path) does it: the 1e-1.
    two_steps_on_fixed_gradients(Kind::BFloat16, 1e-1);
    // float32, as our CPU path does it. The golden updates carry bf16 rounding magnified along small singular
    // directions (reference/README.md), which float32 does not share: measured 0.14 at worst, so 2e-1 here;
    // a wrong update lands near 1 or beyond.
    two_steps_on_fixed_gradients(Kind::Float, 2e-1);
}

fn two_steps_on_fixed_gradients(polar_kind: Kind, muon_tolerance: f64) {
    let r = Reference::load().unwrap();
    let model = reference_model(&r);
    let grads = load(&r, "model/forward_backward.safetensors");
    let steps = load(&r, "model/optimizer_fixed_grads.safetensors");
    let hp = optimizer_config(&r);
    let lrm = r.f64(&["optimizer", "lr_multiplier"]);
    let mut opt = MuonAdamW::new(&model, &hp);
    opt.polar_kind = polar_kind;
    let matrices: Vec<String> =
        model.named_parameters().into_iter().map(|(n, _)| n).filter(|n| n.starts_with("transformer.h.")).collect();
    let snapshot = |m: &Gpt| -> BTreeMap<String, Tensor> {
        m.named_parameters().into_iter().map(|(n, p)| (n, p.detach().copy())).collect()
    };
    let mut before_ours = snapshot(&model);
    let mut before_ref = before_ours.iter().map(|(n, t)| (n.clone(), t.copy())).collect::<BTreeMap<_, _>>();
    for step in 1..=2 {
        // Gradients set exactly to the stored ones: d/dp sum(p · g) = g.
        let surrogate = model
            .named_parameters()
            .into_iter()
            .map(|(n, p)| (p * &grads[&format!("grad.{n}")]).sum(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
        surrogate.backward();
        opt.step(lrm, muon_momentum(step - 1), hp.weight_decay);
        opt.zero_grad();
        let after_ours = snapshot(&model);
        let (mut worst_adam, mut worst_muon): (f64, f64) = (0.0, 0.0);
        for (name, ours) in &after_ours {
            let want = &steps[&format!("step{step}.{name}")];
            if matrices.contains(name) {
                let err = rel_err(&(ours - &before_ours[name]), &(want - &before_ref[name]));
                assert!(
                    err < muon_tolerance,
                    "{polar_kind:?} step {step}, Muon update of {name}: relative error {err:e}"
                );
                worst_muon = worst_muon.max(err);
            } else {
                let err = rel_err(ours, want);
                assert!(err < 1e-5, "step {step}, AdamW {name}: relative error {err:e}");
                worst_adam = worst_adam.max(err);
            }
        }
        eprintln!("{polar_kind:?} step {step}: worst AdamW tensor {worst_adam:e}, worst Muon update {worst_muon:e}");
        before_ref = after_ours.keys().map(|n| (n.clone(), steps[&format!("step{step}.{n}")].copy())).collect();
        before_ours = after_ours;
    }
}

#[test]
fn three_training_steps_give_the_reference_losses() {
    let r = Reference::load().unwrap();
    let model = reference_model(&r);
    let hp = optimizer_config(&r);
    let mut opt = MuonAdamW::new(&model, &hp);
    let want: Vec<f64> = serde_json::from_value(r.get(&["optimizer", "loss_before_each_step"]).clone()).unwrap();
    assert_eq!(want.len(), r.usize(&["optimizer", "training_steps"]));
    for (step, &want) in want.iter().enumerate() {
        let (x, y) = golden_batch(&r, "train", step);
        let loss = model.loss(&x, &y);
        let got = loss.double_value(&[]);
        assert!((got - want).abs() / want < 1e-2, "loss before step {step}: {got} vs {want}");
        eprintln!("loss before step {step}: {got} vs {want} ({:e} relative)", (got - want).abs() / want);
        loss.backward();
        opt.step(r.f64(&["optimizer", "lr_multiplier"]), muon_momentum(step), hp.weight_decay);
        opt.zero_grad();
    }
    let (x, y) = golden_batch(&r, "train", want.len());
    let got = model.loss(&x, &y).double_value(&[]);
    let after = r.f64(&["optimizer", "loss_after_3_steps_on_train.3"]);
    assert!((got - after).abs() / after < 1e-2, "loss after the steps: {got} vs {after}");
    eprintln!("loss after the steps: {got} vs {after} ({:e} relative)", (got - after).abs() / after);
}

#[test]
fn val_bpb_through_the_harness_evaluation_equals_the_reference() {
    let r = Reference::load().unwrap();
    let model = reference_model(&r);
    let vocab = r.usize(&["model", "vocab_size"]);
    let ranks = std::fs::read_to_string(r.path(&format!("tokenizer-{vocab}/ranks.tiktoken"))).unwrap();
    let tok = Arc::new(Tokenizer::from_ranks(parse_ranks(&ranks).unwrap(), vec![]).unwrap());
    let t = r.usize(&["evaluate_bpb", "max_seq_len"]);
    let rows = r.usize(&["evaluate_bpb", "eval_tokens"]) / t;
    let files = split_files(&r.path("data"), Split::Val).unwrap();
    let val = ValRows::read(DataLoader::new(tok.clone(), files, rows, t, LoaderOptions::default())).unwrap();
    // The harness's evaluations: the model's logits, the cross-entropy and the metric in fixed code, on CUDA
    // (the model in this process) and on the CPU (the probes mixed into the metric's calls, as many as an
    // evaluation has, and as an audit has).
    let (on_cuda, on_cpu, audited) = tch::no_grad(|| {
        let probe = causality::check(&model, &val, vocab, "reference").unwrap().unwrap();
        let bpb = evaluate(&model, &val, vocab, tok.token_bytes()).unwrap();
        probe.check_unchanged(&model, vocab).unwrap();
        let on_cpu = |probing| {
            let plan = probes::Plan::new(&val, vocab, 4, "reference", probing).unwrap();
            let bpb = probes::evaluate(&plan, &val, vocab, tok.token_bytes(), |_, x| Ok(Model::logits(&model, x)));
            bpb.unwrap().val_bpb
        };
        (bpb, on_cpu(probes::Probing::routine(val.rows)), on_cpu(probes::Probing::audit(val.rows)))
    });
    let want = r.f64(&["evaluate_bpb", "val_bpb"]);
    for bpb in [on_cuda, on_cpu, audited] {
        assert!((bpb - want).abs() / want < 1e-5, "val_bpb {bpb} vs {want}");
        eprintln!("val_bpb {bpb} vs {want} ({:e} relative)", (bpb - want).abs() / want);
    }
}

#[test]
fn reference_initialisation_has_the_reference_distributions() {
    let r = Reference::load().unwrap();
    tch::manual_seed(0);
    let model = Gpt::new(config(&r), Device::Cpu);
    let init = load(&r, "model/init.safetensors");
    for (name, p) in model.named_parameters() {
        let theirs = &init[&name];
        assert_eq!(p.size(), theirs.size(), "{name}");
        let std = |t: &Tensor| t.to_kind(Kind::Double).std(false).double_value(&[]);
        let mean = |t: &Tensor| t.to_kind(Kind::Double).mean(None).double_value(&[]);
        let (a, b) = (std(p), std(theirs));
        assert!((a - b).abs() <= 0.1 * b + 1e-12, "{name}: std {a} vs {b}");
        assert!((mean(p) - mean(theirs)).abs() <= 0.1 * b + 1e-9, "{name}: mean {} vs {}", mean(p), mean(theirs));
    }
}

#[test]
fn the_training_loss_is_the_cross_entropy_of_the_evaluated_logits() {
    let r = Reference::load().unwrap();
    let model = reference_model(&r);
    let (x, y) = golden_batch(&r, "train", 0);
    // The harness's own check at the hand-over, on the reference weights.
    let worst = loss_check::check(&model, &x, &y, r.usize(&["model", "vocab_size"])).unwrap();
    assert!(worst < 1e-5, "largest difference {worst:e}");
}

/// Each parameter's optimizer group, given where it is built, is the one the original gives its name.
#[test]
fn every_parameter_is_in_the_originals_optimizer_group() {
    let r = Reference::load().unwrap();
    let model = reference_model(&r);
    for p in model.params.iter() {
        let by_name = match p.name.as_str() {
            "lm_head.weight" => Group::Unembedding,
            "transformer.wte.weight" => Group::Embedding,
            n if n.starts_with("value_embeds.") => Group::Embedding,
            "resid_lambdas" => Group::ResidScalars,
            "x0_lambdas" => Group::X0Scalars,
            n if n.starts_with("transformer.h.") => Group::Matrix,
            n => panic!("a parameter the original does not have: {n}"),
        };
        assert_eq!(p.group, by_name, "{}", p.name);
    }
    let golden = load(&r, "model/forward_backward.safetensors");
    assert_eq!(model.params.iter().count() + 2, golden.len(), "every parameter of the original, once");
}
