//! `p2pd`: the node binary (work in progress).

fn main() {
    println!("p2pd: not yet");
}
