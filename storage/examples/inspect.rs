//! Prints what a data directory holds per sled tree (keys, bytes) against sled's size on disk.
//! `cargo run --release -p meterstream-storage --example inspect -- DIR`
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: inspect DIR")?;
    let path = std::path::Path::new(&dir).join("sled");
    // sled refuses to open a store with the other compression setting; stores made since
    // sled compression was turned on use it, older ones do not.
    let db = match sled::Config::new().path(&path).use_compression(true).open() {
        Ok(db) => db,
        Err(_) => sled::Config::new().path(&path).open()?,
    };
    for name in db.tree_names() {
        let t = db.open_tree(&name)?;
        let (mut n, mut k, mut v) = (0u64, 0u64, 0u64);
        for kv in t.iter() {
            let (a, b) = kv?;
            n += 1;
            k += a.len() as u64;
            v += b.len() as u64;
        }
        println!(
            "{:10} {n:>8} keys {k:>10} key bytes {v:>12} value bytes",
            String::from_utf8_lossy(&name)
        );
    }
    println!("sled size_on_disk {}", db.size_on_disk()?);
    Ok(())
}
