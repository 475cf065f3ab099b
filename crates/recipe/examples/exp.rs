#![allow(dead_code)]
use serde::Deserialize;
use serde_saphyr::Spanned;
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vm { cpus: Option<u32>, memory: Option<Spanned<String>>, flag: Option<bool> }
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct R { name: Spanned<String>, vm: Option<Vm>, steps: Option<Vec<Spanned<String>>> }
fn main() {
    let opts = || serde_saphyr::options! { strict_booleans: true, with_snippet: false };
    for y in ["name: a\nvm:\n  cpu: 4\n", "name: a\nvm:\n  cpus: four\n", "name: [a\n", "vm: {}\n", "name: a\nvm:\n  flag: yes\n","name: a\nvm: 3\n", "name: a\nsteps: [a, {x: 1}]\n", "name: a\nvm:\n  memory: 4\n", "name: &x a\nsteps: [*x]\n"] {
        let mut path = String::new();
        let r: Result<R, _> = serde_saphyr::with_deserializer_from_str_with_options(y, opts(), |de| {
            serde_path_to_error::deserialize(de).map_err(|e| { path = e.path().to_string(); e.into_inner() })
        });
        match r { Ok(v) => println!("OK {v:?}"), Err(e) => { let l = e.location(); println!("ERR {path} {:?} | {}", l.map(|l|(l.line(), l.column())), e); } }
    }
}
