#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wormhole_k8s::fuzzing::observed_endpoints(data));
