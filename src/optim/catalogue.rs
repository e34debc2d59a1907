//! The optimizer registry as lists show it (`gradscope optimizers`, the READMEs' tables, the
//! TUI's `o` popup): every optimizer grouped by where it comes from, with its hyper-parameters,
//! their defaults and one-line docs.

use super::spec::{Group, OptimizerKind, OptimizerSpec};

/// One optimizer in a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The optimizer with its defaults: what picking it starts from.
    pub spec: OptimizerSpec,
    pub group: Group,
    /// One line on what it is.
    pub doc: String,
    pub hyper: Vec<HyperEntry>,
}

/// One hyper-parameter of an [`Entry`].
#[derive(Debug, Clone, PartialEq)]
pub struct HyperEntry {
    pub name: String,
    /// The default as a spec writes it (`0.001`, `1e-8`, `false`, `none`, `adamw(lr=0.001)`).
    pub default: String,
    /// One line on what it does.
    pub doc: String,
}

impl Entry {
    /// Registry optimizer `kind`, with torch's (or its package's) defaults.
    pub fn of(kind: OptimizerKind) -> Self {
        let spec = OptimizerSpec::new(kind);
        let hyper = kind
            .hyper_parameters()
            .iter()
            .zip(spec.values())
            .map(|(h, (_, v))| HyperEntry {
                name: h.name.to_string(),
                default: v.to_string(),
                doc: h.doc.to_string(),
            })
            .collect();
        Self {
            group: kind.group(),
            doc: kind.doc().to_string(),
            spec,
            hyper,
        }
    }

    /// The name specs write.
    pub fn name(&self) -> &str {
        self.spec.kind().name()
    }

    /// `lr=0.001, beta1=0.9, ...`: every hyper-parameter with its default.
    pub fn defaults(&self) -> String {
        let pairs: Vec<String> = self
            .hyper
            .iter()
            .map(|h| format!("{}={}", h.name, h.default))
            .collect();
        pairs.join(", ")
    }
}

/// Where a group comes in lists: torch.optim, then the authors' packages, then optax.
fn rank(group: Group) -> u8 {
    match group {
        Group::Torch => 0,
        Group::Modern => 1,
        Group::Optax => 2,
    }
}

/// Every registry optimizer, grouped in list order, each group in the registry's order.
pub fn registry() -> Vec<Entry> {
    let mut entries: Vec<Entry> = OptimizerKind::ALL.iter().map(|&k| Entry::of(k)).collect();
    entries.sort_by_key(|e| rank(e.group));
    entries
}

/// `entries` (in list order) as runs of one group each: (group, its entries).
pub fn by_group(entries: &[Entry]) -> Vec<(Group, &[Entry])> {
    entries
        .chunk_by(|a, b| a.group == b.group)
        .map(|run| (run[0].group, run))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_optimizer_is_listed_once_under_its_group_in_group_order() {
        let entries = registry();
        let mut names: Vec<&str> = entries.iter().map(Entry::name).collect();
        assert_eq!(names.len(), OptimizerKind::ALL.len());
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), OptimizerKind::ALL.len(), "listed twice");
        let groups: Vec<Group> = by_group(&entries).iter().map(|(g, _)| *g).collect();
        let mut sorted = groups.clone();
        sorted.sort_by_key(|g| rank(*g));
        sorted.dedup();
        assert_eq!(groups, sorted, "each group once, in order");
    }

    #[test]
    fn an_entry_shows_the_defaults_a_spec_writes() {
        let adam = Entry::of(OptimizerKind::Adam);
        assert_eq!(
            adam.defaults(),
            "lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0, amsgrad=false"
        );
        assert_eq!(
            adam.hyper[1].doc,
            "Decay of the first moment (torch's `betas[0]`)."
        );
        assert_eq!(adam.group, Group::Torch);
        // The defaults parse back to the spec the entry starts from.
        let written = format!("{}({})", adam.name(), adam.defaults());
        assert_eq!(OptimizerSpec::parse(&written).unwrap(), adam.spec);
    }
}
