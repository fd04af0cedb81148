fn main() {
    println!("bosun");
}
