//! Facts about the machine a run is on: accelerator peak rates (for MFU), whether a GPU is new enough, and peak
//! memory of the process.

/// Dense bf16 peak FLOP/s (datasheet figures: no sparsity; for GeForce cards, tensor cores with float32
/// accumulation, which is what bf16 matrix products use) by a substring of the device name; the longest match
/// wins, so "H100 PCIe" is not taken for the SXM part. A card missing here gets `mfu_percent: n/a`: add a line.
const PEAK_BF16_FLOPS: &[(&str, f64)] = &[
    ("H100", 989.5e12), // SXM
    ("H100 PCIe", 756.0e12),
    ("H100 NVL", 835.0e12),
    ("H200", 989.5e12),
    ("H20", 148.0e12),
    ("H800", 989.5e12),
    ("GH200", 989.5e12),
    ("B200", 2250.0e12),
    ("B100", 1750.0e12),
    ("GB200", 2500.0e12),
    ("A100", 312.0e12),
    ("A800", 312.0e12),
    ("A40", 149.7e12),
    ("A30", 165.0e12),
    ("A10", 125.0e12),
    ("A10G", 70.0e12),
    ("L40S", 362.1e12),
    ("L40", 181.0e12),
    ("L4", 121.0e12),
    ("RTX 6000 Ada", 364.2e12),
    ("RTX A6000", 154.8e12),
    ("RTX 5090", 209.5e12),
    ("RTX 4090", 165.2e12),
    ("RTX 4080", 97.5e12),
    ("RTX 3090 Ti", 80.0e12),
    ("RTX 3090", 71.0e12),
    ("RTX 3080", 59.5e12),
    ("MI300X", 1307.4e12),
    ("MI250X", 383.0e12),
];

/// The bf16 peak of a GPU by its name, or None if the table does not know it. A key matches as a whole word
/// (so "A10" is not taken for the "A100", nor "A40" for the "RTX A4000").
pub fn peak_bf16_flops(device_name: &str) -> Option<f64> {
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    let matches = |key: &str| {
        device_name.match_indices(key).any(|(i, _)| {
            !word(device_name[..i].chars().next_back()) && !word(device_name[i + key.len()..].chars().next())
        })
    };
    PEAK_BF16_FLOPS.iter().filter(|(key, _)| matches(key)).max_by_key(|(key, _)| key.len()).map(|&(_, flops)| flops)
}

/// For a GPU the table does not know: a line saying that MFU will read n/a and how to add the card.
pub fn mfu_unknown_note(device_name: &str) -> Option<String> {
    let gpu = !device_name.starts_with("cpu");
    (gpu && peak_bf16_flops(device_name).is_none()).then(|| {
        format!(
            "mfu: n/a: {device_name} is not in the table of peak FLOP/s; add its dense bf16 peak (no sparsity) to \
             PEAK_BF16_FLOPS in harness/src/device.rs"
        )
    })
}

/// A GPU, as `nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpu {
    pub name: String,
    pub compute_capability: (u32, u32),
}

/// The GPUs in the output of `nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader`, in order; a line
/// it cannot read (a driver too old for `compute_cap` prints `[N/A]`) is left out.
pub fn parse_gpus(text: &str) -> Vec<Gpu> {
    text.lines()
        .filter_map(|line| {
            let (name, cap) = line.rsplit_once(',')?;
            let (major, minor) = cap.trim().split_once('.')?;
            Some(Gpu { name: name.trim().to_string(), compute_capability: (major.parse().ok()?, minor.parse().ok()?) })
        })
        .collect()
}

/// The oldest compute capability the training file runs on: Ampere's, for bf16 and FlashAttention-2.
pub const MIN_COMPUTE_CAPABILITY: (u32, u32) = (8, 0);

/// Ok where the training file runs on `gpu`; else an error that names the card, its compute capability and
/// what is needed. Decided from the compute capability, never from the name.
pub fn check_gpu(gpu: &Gpu) -> anyhow::Result<()> {
    let (major, minor) = gpu.compute_capability;
    if gpu.compute_capability >= MIN_COMPUTE_CAPABILITY {
        return Ok(());
    }
    anyhow::bail!(
        "{} has compute capability {major}.{minor}; the training file needs {}.{} or newer (Ampere, Ada, Hopper, \
         Blackwell) for bf16 and FlashAttention-2. Train on the CPU (`--device cpu`) or on such a card.",
        gpu.name,
        MIN_COMPUTE_CAPABILITY.0,
        MIN_COMPUTE_CAPABILITY.1
    )
}

/// Peak resident memory of this process in MiB (Linux; None elsewhere).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_devices_by_longest_name() {
        assert_eq!(peak_bf16_flops("NVIDIA H100 80GB HBM3"), Some(989.5e12));
        assert_eq!(peak_bf16_flops("NVIDIA H100 PCIe"), Some(756.0e12));
        assert_eq!(peak_bf16_flops("NVIDIA L40S"), Some(362.1e12));
        assert_eq!(peak_bf16_flops("NVIDIA GeForce RTX 4090"), Some(165.2e12));
        assert_eq!(peak_bf16_flops("NVIDIA A10"), Some(125.0e12));
        assert_eq!(peak_bf16_flops("NVIDIA A10G"), Some(70.0e12));
        assert_eq!(peak_bf16_flops("NVIDIA GeForce RTX 3090 Ti"), Some(80.0e12));
        assert_eq!(peak_bf16_flops("NVIDIA GB200"), Some(2500.0e12));
        assert_eq!(peak_bf16_flops("NVIDIA A100-SXM4-80GB"), Some(312.0e12));
        assert_eq!(peak_bf16_flops("NVIDIA H200"), Some(989.5e12));
        assert_eq!(peak_bf16_flops("NVIDIA RTX A4000"), None, "not an A40");
        assert_eq!(peak_bf16_flops("cpu"), None);
        assert_eq!(mfu_unknown_note("cpu (2 threads)"), None);
        assert_eq!(mfu_unknown_note("NVIDIA H100 80GB HBM3"), None);
        let note = mfu_unknown_note("Tesla V100-SXM2-16GB").unwrap();
        assert!(note.contains("Tesla V100-SXM2-16GB") && note.contains("harness/src/device.rs"), "{note}");
        assert!(peak_rss_mb().unwrap() > 1.0);
    }

    #[test]
    fn cards_before_ampere_are_refused_by_their_compute_capability() {
        let listed =
            "NVIDIA H100 80GB HBM3, 9.0\nNVIDIA GeForce RTX 4090, 8.9\nTesla T4, 7.5\nTesla V100-SXM2-16GB, 7.0\n\
                      NVIDIA A100-SXM4-80GB, 8.0\nQuadro P1000, [N/A]\n";
        let gpus = parse_gpus(listed);
        let caps: Vec<(u32, u32)> = gpus.iter().map(|g| g.compute_capability).collect();
        assert_eq!(caps, [(9, 0), (8, 9), (7, 5), (7, 0), (8, 0)], "the unreadable line is left out");
        let ok: Vec<bool> = gpus.iter().map(|g| check_gpu(g).is_ok()).collect();
        assert_eq!(ok, [true, true, false, false, true]);
        let err = check_gpu(&gpus[2]).unwrap_err().to_string();
        assert!(err.starts_with("Tesla T4 has compute capability 7.5; the training file needs 8.0 or newer"), "{err}");
        // The capability decides, not the name: an unknown name with 8.6 runs, a familiar one with 7.5 does not.
        assert!(check_gpu(&Gpu { name: "Some Future Card".into(), compute_capability: (8, 6) }).is_ok());
        assert!(check_gpu(&Gpu { name: "NVIDIA A100".into(), compute_capability: (7, 5) }).is_err());
        assert!(parse_gpus("").is_empty() && parse_gpus("garbage").is_empty());
    }
}
