//! Where a training step's time goes on the GPU: each part timed alone (synchronised), h100 shapes.
//! Run by `scripts/gpu-check.sh device` after the baseline; prints one line per part.

use std::time::Instant;

use tch::{Device, Kind, Reduction, Tensor};
use train::{Gpt, GptConfig, MuonAdamW, H100};

fn time_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    tch::Cuda::synchronize(0);
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    tch::Cuda::synchronize(0);
    t.elapsed().as_secs_f64() * 1000.0 / reps as f64
}

fn main() {
    let dev = Device::Cuda(0);
    autoresearch_ops::use_bf16_autocast();
    let h = &H100;
    let config = GptConfig::from_hyper(h, 8192, 2048);
    let model = Gpt::new(config.clone(), dev);
    let mut opt = MuonAdamW::new(&model, &h.opt);
    let (b, t, d, v) = (h.device_batch_size, 2048, config.n_embd, 8192);
    let x = Tensor::randint(v, [b, t], (Kind::Int64, dev));
    let y = Tensor::randint(v, [b, t], (Kind::Int64, dev));
    let ac = |f: &mut dyn FnMut()| autoresearch_ops::autocast(true, f);
    let report = |name: &str, ms: f64| println!("breakdown: {name:<44} {ms:8.2} ms");

    report("forward, no grad", time_ms(5, || ac(&mut || drop(tch::no_grad(|| model.logits(&x))))));
    report("forward + loss (grad)", time_ms(5, || ac(&mut || drop(model.loss(&x, &y)))));
    report(
        "forward + loss + backward",
        time_ms(5, || {
            let loss = autoresearch_ops::autocast(true, || model.loss(&x, &y));
            loss.backward();
        }),
    );
    let (xh, yh) = (x.narrow(0, 0, b / 2), y.narrow(0, 0, b / 2));
    report(
        "forward + loss + backward, half batch",
        time_ms(5, || {
            let loss = autoresearch_ops::autocast(true, || model.loss(&xh, &yh));
            loss.backward();
        }),
    );
    report(
        "optimizer step + zero_grad",
        time_ms(5, || {
            opt.step(1.0, 0.9, 0.1);
            opt.zero_grad();
        }),
    );

    let hidden = Tensor::randn([b, t, d], (Kind::BFloat16, dev)).set_requires_grad(true);
    let head = (Tensor::randn([v, d], (Kind::Float, dev)) * 0.01).set_requires_grad(true);
    let logits_path = |softcap: bool| {
        let logits = autoresearch_ops::autocast(true, || hidden.linear(&head, None::<Tensor>)).to_kind(Kind::Float);
        let logits = if softcap { (logits / 15.0).tanh() * 15.0 } else { logits };
        logits.view([-1, v]).cross_entropy_loss(&y.view([-1]), None::<Tensor>, Reduction::Mean, -1, 0.0)
    };
    report("lm_head+softcap+CE fwd+bwd", time_ms(5, || logits_path(true).backward()));
    report("lm_head+CE fwd+bwd (no softcap)", time_ms(5, || logits_path(false).backward()));
    report(
        "lm_head+fused softcap CE fwd+bwd",
        time_ms(5, || {
            let logits = autoresearch_ops::autocast(true, || hidden.linear(&head, None::<Tensor>));
            autoresearch_ops::fused_softcap_cross_entropy(&logits.view([-1, v]), &y.view([-1]), 15.0)
                .unwrap()
                .mean(Kind::Float)
                .backward()
        }),
    );
    report(
        "lm_head matmul fwd only",
        time_ms(5, || drop(autoresearch_ops::autocast(true, || hidden.linear(&head, None::<Tensor>)))),
    );

    let (heads, hd) = (config.n_head, config.head_dim());
    let qkv = || Tensor::randn([b, t, heads, hd], (Kind::BFloat16, dev)).set_requires_grad(true);
    let (q, k, vv) = (qkv(), qkv(), qkv());
    for window in [1024, 2048] {
        report(
            &format!("flash attention window {window} fwd+bwd"),
            time_ms(5, || autoresearch_ops::flash_attention(&q, &k, &vv, window).unwrap().sum(Kind::Float).backward()),
        );
    }
    let (i, j) =
        (Tensor::arange(t, (Kind::Int64, dev)).unsqueeze(1), Tensor::arange(t, (Kind::Int64, dev)).unsqueeze(0));
    let mask = j.le_tensor(&i).logical_and(&j.ge_tensor(&(i - 1024)));
    report(
        "sdpa with window-1024 mask fwd+bwd",
        time_ms(5, || {
            let (q, k, vv) = (q.transpose(1, 2), k.transpose(1, 2), vv.transpose(1, 2));
            Tensor::scaled_dot_product_attention(&q, &k, &vv, Some(&mask), 0.0, false, None, false)
                .sum(Kind::Float)
                .backward()
        }),
    );
    report(
        "sdpa causal (full) fwd+bwd",
        time_ms(5, || {
            let (q, k, vv) = (q.transpose(1, 2), k.transpose(1, 2), vv.transpose(1, 2));
            Tensor::scaled_dot_product_attention(&q, &k, &vv, None::<Tensor>, 0.0, true, None, false)
                .sum(Kind::Float)
                .backward()
        }),
    );

    let a = Tensor::randn([b * t, d], (Kind::BFloat16, dev));
    let w = Tensor::randn([4 * d, d], (Kind::BFloat16, dev));
    let ms = time_ms(10, || drop(a.linear(&w, None::<Tensor>)));
    report(
        &format!("matmul {}x{}x{} ({:.0} TFLOP/s)", b * t, d, 4 * d, 2.0 * (b * t * d * 4 * d) as f64 / ms / 1e9),
        ms,
    );
    let big = Tensor::randn([b * t, d], (Kind::BFloat16, dev));
    let ms = time_ms(10, || drop(&big * 1.5));
    report(&format!("elementwise pass over (B*T, d) bf16 ({:.0} GB/s)", 2.0 * (b * t * d * 2) as f64 / ms / 1e6), ms);

    let cpu_batch: Vec<i64> = (0..b * t).collect();
    report(
        "batch to device (from_slice + to_device)",
        time_ms(10, || drop(Tensor::from_slice(&cpu_batch).to_device(dev))),
    );
}
