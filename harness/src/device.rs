//! Facts about the machine a run is on: accelerator peak rates (for MFU) and peak memory of the process.

/// Dense bf16 peak FLOP/s (datasheet figures, no sparsity) by a substring of the device name; the longest
/// match wins, so "H100 PCIe" is not taken for the SXM part.
const PEAK_BF16_FLOPS: &[(&str, f64)] = &[
    ("H100", 989.5e12), // SXM
    ("H100 PCIe", 756.0e12),
    ("H100 NVL", 835.0e12),
    ("H200", 989.5e12),
    ("H800", 989.5e12),
    ("GH200", 989.5e12),
    ("B200", 2250.0e12),
    ("B100", 1750.0e12),
    ("A100", 312.0e12),
    ("A800", 312.0e12),
    ("A10G", 70.0e12),
    ("L40S", 362.1e12),
    ("L40", 181.0e12),
    ("L4", 121.0e12),
    ("RTX 6000 Ada", 364.2e12),
    ("RTX A6000", 154.8e12),
    ("RTX 5090", 209.5e12),
    ("RTX 4090", 165.2e12),
    ("RTX 3090", 71.0e12),
    ("MI300X", 1307.4e12),
    ("MI250X", 383.0e12),
];

/// The bf16 peak of a GPU by its name, or None if the table does not know it.
pub fn peak_bf16_flops(device_name: &str) -> Option<f64> {
    PEAK_BF16_FLOPS
        .iter()
        .filter(|(key, _)| device_name.contains(key))
        .max_by_key(|(key, _)| key.len())
        .map(|&(_, flops)| flops)
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
        assert_eq!(peak_bf16_flops("cpu"), None);
        assert!(peak_rss_mb().unwrap() > 1.0);
    }
}
