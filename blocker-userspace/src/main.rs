fn main() {
    println!("{}", blocker::datapath::PROGRAM.len());
}
