//! CUDA smoke tests, compiled only into the CUDA build (`--features cuda`) and run on a GPU machine by
//! scripts/gpu-check.sh: FlashAttention with windows against masked attention (forward and backward), the
//! reference model under bf16 autocast, an optimizer step, and the device facts.
#![cfg(feature = "cuda")]

mod common;

use autoresearch_golden::Reference;
use common::rel_err;
use tch::{Device, Kind, Tensor};
use train::{Gpt, MuonAdamW, H100};

fn cuda() -> Device {
    assert!(tch::Cuda::is_available(), "no CUDA device: is libtorch_cuda linked and the driver there?");
    Device::Cuda(0)
}

/// Masked softmax attention in float32: query i sees keys i − window ..= i. (B, T, H, D) in and out.
fn masked_attention(q: &Tensor, k: &Tensor, v: &Tensor, window: i64) -> Tensor {
    let t = q.size()[1];
    let i = Tensor::arange(t, (Kind::Int64, q.device())).unsqueeze(1);
    let j = Tensor::arange(t, (Kind::Int64, q.device())).unsqueeze(0);
    let mask = j.le_tensor(&i).logical_and(&j.ge_tensor(&(i - window)));
    let (q, k, v) = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2));
    Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&mask), 0.0, false, None, false).transpose(1, 2)
}

#[test]
fn flash_attention_with_windows_matches_masked_attention_forward_and_backward() {
    let dev = cuda();
    tch::manual_seed(1);
    let (b, t, h, d) = (2, 512, 4, 128);
    for window in [64, 256, t] {
        let make = || Tensor::randn([b, t, h, d], (Kind::Float, dev));
        let (q, k, v) = (make(), make(), make());
        let grad_out = Tensor::randn([b, t, h, d], (Kind::Float, dev));
        let leaf = |x: &Tensor, kind| x.to_kind(kind).detach().set_requires_grad(true);

        let (q16, k16, v16) = (leaf(&q, Kind::BFloat16), leaf(&k, Kind::BFloat16), leaf(&v, Kind::BFloat16));
        let out = autoresearch_ops::flash_attention(&q16, &k16, &v16, window).unwrap();
        (out.to_kind(Kind::Float) * &grad_out).sum(Kind::Float).backward();

        let (q32, k32, v32) = (leaf(&q, Kind::Float), leaf(&k, Kind::Float), leaf(&v, Kind::Float));
        let want = masked_attention(&q32, &k32, &v32, window);
        (&want * &grad_out).sum(Kind::Float).backward();

        let err = rel_err(&out, &want);
        println!("window {window}: output {err:.2e}");
        assert!(err < 2e-2, "window {window}: output relative error {err:e}");
        for (name, ours, theirs) in [("q", &q16, &q32), ("k", &k16, &k32), ("v", &v16, &v32)] {
            let err = rel_err(&ours.grad(), &theirs.grad());
            println!("window {window}: grad {name} {err:.2e}");
            assert!(err < 3e-2, "window {window}: grad {name} relative error {err:e}");
        }
    }
}

#[test]
fn the_fused_softcap_cross_entropy_matches_plain_ops() {
    let dev = cuda();
    autoresearch_ops::fused_kernels_available(0).unwrap();
    tch::manual_seed(2);
    let (rows, vocab, cap) = (4096, 8192, 15.0);
    let targets = Tensor::randint(vocab, [rows], (Kind::Int64, dev));
    let grad_out = Tensor::rand([rows], (Kind::Float, dev));
    for kind in [Kind::BFloat16, Kind::Float] {
        let base = Tensor::randn([rows, vocab], (Kind::Float, dev)) * 20.0;
        let fused_in = base.to_kind(kind).detach().set_requires_grad(true);
        let plain_in = base.to_kind(kind).to_kind(Kind::Float).detach().set_requires_grad(true);
        let fused = autoresearch_ops::fused_softcap_cross_entropy(&fused_in, &targets, cap).unwrap();
        let plain = ((&plain_in / cap).tanh() * cap).cross_entropy_loss(
            &targets,
            None::<Tensor>,
            tch::Reduction::None,
            -1,
            0.0,
        );
        (&fused * &grad_out).sum(Kind::Float).backward();
        (&plain * &grad_out).sum(Kind::Float).backward();
        let (loss_err, grad_err) = (rel_err(&fused, &plain), rel_err(&fused_in.grad(), &plain_in.grad()));
        println!("fused loss {kind:?}: loss {loss_err:.2e}, grad {grad_err:.2e}");
        assert!(loss_err < 1e-5, "{kind:?}: loss relative error {loss_err:e}");
        let grad_tolerance = if kind == Kind::BFloat16 { 1e-2 } else { 1e-5 };
        assert!(grad_err < grad_tolerance, "{kind:?}: grad relative error {grad_err:e}");
    }
}

#[test]
fn the_reference_model_under_bf16_autocast_is_close_to_float32() {
    let dev = cuda();
    autoresearch_ops::use_bf16_autocast();
    let r = Reference::load().unwrap();
    let config = common::config(&r);
    let weights: Vec<(String, Tensor)> = Tensor::read_safetensors(r.path("model/random.safetensors")).unwrap();
    let model = Gpt::new(config, dev);
    model.load(&weights).unwrap();
    let golden: std::collections::BTreeMap<String, Tensor> =
        Tensor::read_safetensors(r.path("model/forward_backward.safetensors")).unwrap().into_iter().collect();
    let batches: std::collections::BTreeMap<String, Tensor> =
        Tensor::read_safetensors(r.path("dataloader/batches_B2_T64.safetensors")).unwrap().into_iter().collect();
    let (x, y) = (batches["train.0.inputs"].to_device(dev), batches["train.0.targets"].to_device(dev));

    let per_token = autoresearch_ops::autocast(true, || model.per_token_loss(&x, &y));
    let err = rel_err(&per_token.to_device(Device::Cpu), &golden["per_token_loss"]);
    println!("bf16 per-token loss vs float32 reference: {err:.2e}");
    assert!(err < 2e-2, "per-token loss relative error {err:e}");

    let loss = autoresearch_ops::autocast(true, || model.loss(&x, &y));
    assert_eq!(autoresearch_ops::autocast(true, || model.logits(&x)).kind(), Kind::Float);
    loss.backward();
    let mut opt = MuonAdamW::new(&model, &H100.opt);
    assert_eq!(opt.polar_kind, Kind::BFloat16);
    opt.step(1.0, 0.85, 0.2);
    opt.zero_grad();
    let after = autoresearch_ops::autocast(true, || model.loss(&x, &y)).double_value(&[]);
    println!("loss {} -> {after} after one step", loss.double_value(&[]));
    assert!(after.is_finite());
}

#[test]
fn device_facts_are_reported() {
    let dev = cuda();
    let name = autoresearch_ops::cuda_device_name(0).unwrap();
    let _big = Tensor::zeros([256, 1024, 1024], (Kind::Float, dev));
    let peak = autoresearch_ops::cuda_peak_memory_mb(0).unwrap();
    println!("{name}: peak {peak:.0} MiB");
    assert!(!name.is_empty());
    assert!(peak >= 1024.0, "a 1 GiB tensor was allocated, the peak says {peak} MiB");
}
