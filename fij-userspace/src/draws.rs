//! The seeded draws made in userspace before a campaign runs (the compile stage's): which
//! instances a fault selects (`select`) and when a time-triggered fault falls due for each of
//! them. Both come from the campaign's ChaCha20 key (`fij_common::random`), through `rand` and
//! `rand_distr`, so `fij plan` and `fij run` with one seed draw exactly the same. Hit draws
//! (`probability`) are made in kernel, by `fij_common::random::hit_draw`.
use std::time::Duration;

use fij_common::random::{
    seed_bytes, stream_for_fault, stream_for_fault_selection, stream_for_fault_times,
    stream_for_hits_on_node, stream_for_node_fault_selection, stream_for_node_fault_times,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Exp, Uniform, Weibull};

use crate::scenario::{Scenario, Schedule, Select};

/// Most nodes a scenario may have: a node's hit streams carry its index in 16 bits.
pub const MAX_NODES: usize = 1 << 16;

/// The stream each fault's per-hit draws come from (`FaultRule::hit_stream`, in fault order).
/// Without `[[node]]`: the fault's own, keyed by its fault id, as before nodes existed. With
/// nodes: its node's, keyed by (node, the fault's position among the faults of that node's
/// targets), so one node's draws come from (seed, node) and no other node's faults move them.
/// Selections and due times stay keyed by the global fault id: they are decided before the
/// run and the same on every node (docs/determinism.md).
pub fn hit_streams(scenario: &Scenario) -> Vec<u64> {
    let cluster = &scenario.cluster;
    let mut on_node = vec![0u32; cluster.nodes.len()];
    scenario
        .faults
        .iter()
        .enumerate()
        .map(
            |(id, fault)| match cluster.target_node.get(fault.target).copied().flatten() {
                Some(node) => {
                    let position = on_node[node];
                    on_node[node] += 1;
                    stream_for_hits_on_node(node as u32, position)
                }
                None => stream_for_fault(id as u32),
            },
        )
        .collect()
}

fn stream(seed: u64, stream: u64, word_pos: u128) -> ChaCha20Rng {
    let mut rng = ChaCha20Rng::from_seed(seed_bytes(seed));
    rng.set_stream(stream);
    rng.set_word_pos(word_pos);
    rng
}

/// The instances (0-based, ascending) of a target with `instances` instances that fault
/// `fault_id` selects.
pub fn selected_instances(seed: u64, fault_id: u32, select: Select, instances: u32) -> Vec<u32> {
    sample(
        seed,
        stream_for_fault_selection(fault_id),
        select,
        instances,
    )
}

/// The candidates (0-based positions in its `nodes`, ascending) that node fault
/// `node_fault_id` fails: the same draw as `select` of instances, in the node faults' own stream.
pub fn selected_nodes(seed: u64, node_fault_id: u32, select: Select, candidates: u32) -> Vec<u32> {
    sample(
        seed,
        stream_for_node_fault_selection(node_fault_id),
        select,
        candidates,
    )
}

/// `k` of `0..n` as `select` says, drawn from `stream_id` (sorted).
fn sample(seed: u64, stream_id: u64, select: Select, instances: u32) -> Vec<u32> {
    let n = instances as usize;
    let k = match select {
        Select::All => return (0..instances).collect(),
        Select::One => 1,
        Select::Fixed(k) => (k as usize).min(n),
        Select::Percent(p) => ((p / 100.0 * n as f64).ceil() as usize).clamp(1, n),
    };
    let mut rng = stream(seed, stream_id, 0);
    let mut picked: Vec<u32> = rand::seq::index::sample(&mut rng, n, k)
        .into_iter()
        .map(|i| i as u32)
        .collect();
    picked.sort_unstable();
    picked
}

/// When fault `fault_id` falls due for `instance`, counted from the campaign start.
pub fn due_after(seed: u64, fault_id: u32, instance: u32, schedule: &Schedule) -> Duration {
    sample_time(seed, stream_for_fault_times(fault_id), instance, schedule)
}

/// When node fault `node_fault_id` falls due for its candidate node `candidate` (0-based
/// position in its `nodes`), counted from the campaign start.
pub fn node_due_after(
    seed: u64,
    node_fault_id: u32,
    candidate: u32,
    schedule: &Schedule,
) -> Duration {
    sample_time(
        seed,
        stream_for_node_fault_times(node_fault_id),
        candidate,
        schedule,
    )
}

/// A time from `schedule`, drawn at word position `region << 32` of `stream_id`.
fn sample_time(seed: u64, stream_id: u64, region: u32, schedule: &Schedule) -> Duration {
    let mut rng = stream(seed, stream_id, (region as u128) << 32);
    let secs = match schedule {
        Schedule::At(at) => return *at,
        Schedule::Exponential { mean } => Exp::new(1.0 / mean.as_secs_f64())
            .expect("mean > 0")
            .sample(&mut rng),
        Schedule::Weibull { scale, shape } => Weibull::new(scale.as_secs_f64(), *shape)
            .expect("scale, shape > 0")
            .sample(&mut rng),
        Schedule::Uniform { min, max } => {
            Uniform::new_inclusive(min.as_secs_f64(), max.as_secs_f64())
                .expect("min < max")
                .sample(&mut rng)
        }
    };
    Duration::from_secs_f64(secs.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_are_seeded_sized_and_sorted() {
        assert_eq!(selected_instances(1, 0, Select::All, 4), vec![0, 1, 2, 3]);
        let one = selected_instances(1, 0, Select::One, 10);
        assert_eq!(one.len(), 1);
        assert_eq!(one, selected_instances(1, 0, Select::One, 10));
        assert_eq!(selected_instances(9, 2, Select::Fixed(3), 8).len(), 3);
        assert_eq!(selected_instances(9, 2, Select::Fixed(30), 8).len(), 8);
        let half = selected_instances(5, 1, Select::Percent(50.0), 7);
        assert_eq!(half.len(), 4);
        assert!(half.windows(2).all(|w| w[0] < w[1]));
        // different seeds pick differently somewhere among a few tries
        let picks: Vec<_> = (0..8)
            .map(|s| selected_instances(s, 0, Select::One, 100))
            .collect();
        assert!(picks.iter().any(|p| p != &picks[0]));
    }

    #[test]
    fn due_times_follow_their_distribution_and_are_per_instance() {
        let exp = Schedule::Exponential {
            mean: Duration::from_secs(10),
        };
        let times: Vec<f64> = (0..4000)
            .map(|i| due_after(3, 0, i, &exp).as_secs_f64())
            .collect();
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        assert!((9.0..11.0).contains(&mean), "mean {mean}");
        assert_eq!(due_after(3, 0, 7, &exp), due_after(3, 0, 7, &exp));
        assert_ne!(due_after(3, 0, 7, &exp), due_after(3, 0, 8, &exp));
        assert_ne!(due_after(3, 0, 7, &exp), due_after(4, 0, 7, &exp));
        let uni = Schedule::Uniform {
            min: Duration::from_secs(1),
            max: Duration::from_secs(2),
        };
        assert!((0..100).all(|i| (1.0..=2.0).contains(&due_after(1, 1, i, &uni).as_secs_f64())));
        assert_eq!(
            due_after(1, 1, 0, &Schedule::At(Duration::from_millis(1500))),
            Duration::from_millis(1500)
        );
    }
}
