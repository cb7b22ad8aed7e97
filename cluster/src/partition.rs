//! A device's partition: a stable hash of its id (the first segment of a stream path) modulo
//! the partition count, fixed when the cluster is created. FNV-1a, so every node and version
//! computes the same partition.

/// The partition of `device` among `partitions` (at least 1).
pub fn of_device(device: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in device.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(partitions.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        // Fixed values: a change of hash would move every device to another owner.
        assert_eq!(of_device("00000000-00000000-00409DFF-FF418079", 256), 22);
        assert_eq!(of_device("gw-00409DFF-FF410003", 256), 20);
        assert_eq!(of_device("gw", 1), 0);
        assert_eq!(of_device("gw", 0), 0);
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[of_device(&format!("gw-00409DFF-FF41{i:04X}"), 16) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }
}
