//! The optimizer and trick registries as lists show them (`gradscope optimizers`, the READMEs'
//! tables, the TUI's `o` popup): entries under their sections, the optimizers grouped by where
//! they come from, then the tricks, each with its parameters, their defaults and one-line docs.

use super::spec::{Group, HyperParam, HyperValue, OptimizerKind, OptimizerSpec};
use super::tricks::{ChainSpec, TrickKind, TrickSpec};

/// The heading an entry is listed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Optimizers, by where they come from.
    Optimizers(Group),
    /// Tricks, written after an optimizer with ` + `.
    Tricks,
}

impl Section {
    /// The heading lists show.
    pub fn title(self) -> &'static str {
        match self {
            Section::Optimizers(g) => g.title(),
            Section::Tricks => "tricks",
        }
    }

    /// What one of its entries is called (a table's first column).
    pub fn noun(self) -> &'static str {
        match self {
            Section::Optimizers(_) => "optimizer",
            Section::Tricks => "trick",
        }
    }

    /// What one of its entries' parameters is called.
    pub fn parameter_noun(self) -> &'static str {
        match self {
            Section::Optimizers(_) => "hyper-parameter",
            Section::Tricks => "parameter",
        }
    }

    /// Where it comes in lists: torch.optim, the authors' packages, optax, a loss file's own,
    /// then the tricks.
    fn rank(self) -> u8 {
        match self {
            Section::Optimizers(Group::Torch) => 0,
            Section::Optimizers(Group::Modern) => 1,
            Section::Optimizers(Group::Optax) => 2,
            Section::Optimizers(Group::Own) => 3,
            Section::Tricks => 4,
        }
    }
}

/// What an entry is, which decides what choosing it does to a spec.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// An optimizer with its defaults: a spec starts from it.
    Optimizer(OptimizerSpec),
    /// A trick: it goes after a spec's optimizer and tricks.
    Trick(TrickKind),
}

/// One optimizer or trick in a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub item: Item,
    pub section: Section,
    /// One line on what it is.
    pub doc: String,
    pub hyper: Vec<HyperEntry>,
}

/// One parameter of an [`Entry`].
#[derive(Debug, Clone, PartialEq)]
pub struct HyperEntry {
    pub name: String,
    /// The default as a spec writes it (`0.001`, `1e-8`, `false`, `none`, `adamw(lr=0.001)`).
    pub default: String,
    /// One line on what it does.
    pub doc: String,
}

/// `params` with their default `values` (in the same order), as entries list them.
fn hyper(params: &[HyperParam], values: Vec<(&str, HyperValue)>) -> Vec<HyperEntry> {
    params
        .iter()
        .zip(values)
        .map(|(h, (_, v))| HyperEntry {
            name: h.name.to_string(),
            default: v.to_string(),
            doc: h.doc.to_string(),
        })
        .collect()
}

impl Entry {
    /// Registry optimizer `kind`, with torch's (or its package's) defaults.
    pub fn optimizer(kind: OptimizerKind) -> Self {
        let spec = OptimizerSpec::new(kind);
        let hyper = hyper(kind.hyper_parameters(), spec.values());
        Self {
            section: Section::Optimizers(kind.group()),
            doc: kind.doc().to_string(),
            hyper,
            item: Item::Optimizer(spec),
        }
    }

    /// An optimizer a loss file writes itself, with the defaults its table gives.
    pub fn own(program: std::sync::Arc<dyn super::custom::UpdateProgram>) -> Self {
        let sig = program.signature();
        Self {
            section: Section::Optimizers(Group::Own),
            doc: sig.about.clone(),
            hyper: sig
                .hyper
                .iter()
                .map(|(name, default)| HyperEntry {
                    name: name.clone(),
                    default: HyperValue::Number(*default).to_string(),
                    doc: String::new(),
                })
                .collect(),
            item: Item::Optimizer(OptimizerSpec::Custom(super::custom::Custom::new(
                program.clone(),
            ))),
        }
    }

    /// Registry trick `kind`, with its defaults.
    pub fn trick(kind: TrickKind) -> Self {
        Self {
            item: Item::Trick(kind),
            section: Section::Tricks,
            doc: kind.doc().to_string(),
            hyper: hyper(kind.parameters(), TrickSpec::new(kind).values()),
        }
    }

    /// The name specs write.
    pub fn name(&self) -> &str {
        match &self.item {
            Item::Optimizer(spec) => spec.name(),
            Item::Trick(kind) => kind.name(),
        }
    }

    /// `lr=0.001, beta1=0.9, ...`: every parameter with its default (empty for none).
    pub fn defaults(&self) -> String {
        let pairs: Vec<String> = self
            .hyper
            .iter()
            .map(|h| format!("{}={}", h.name, h.default))
            .collect();
        pairs.join(", ")
    }

    /// The spec text choosing this entry gives, from `current` (the chain of the run it starts
    /// from): an optimizer's own spec in its place; or `current` with this trick after its
    /// tricks, every parameter written out so that it can be edited where it stands.
    pub fn chosen(&self, current: &ChainSpec) -> String {
        match &self.item {
            Item::Optimizer(spec) => spec.to_string(),
            Item::Trick(_) if self.hyper.is_empty() => format!("{current} + {}", self.name()),
            Item::Trick(_) => format!("{current} + {}({})", self.name(), self.defaults()),
        }
    }
}

/// Every registry optimizer and trick, section by section in list order, each section in its
/// registry's order.
pub fn registry() -> Vec<Entry> {
    with_own(&[])
}

/// [`registry`] with a loss file's `own` optimizers in their section (before the tricks).
pub fn with_own(own: &[std::sync::Arc<dyn super::custom::UpdateProgram>]) -> Vec<Entry> {
    let optimizers = OptimizerKind::ALL.iter().map(|&k| Entry::optimizer(k));
    let own = own.iter().map(|p| Entry::own(p.clone()));
    let tricks = TrickKind::ALL.iter().map(|&k| Entry::trick(k));
    let mut entries: Vec<Entry> = optimizers.chain(own).chain(tricks).collect();
    entries.sort_by_key(|e| e.section.rank());
    entries
}

/// `entries` (in list order) as runs of one section each: (section, its entries).
pub fn by_section(entries: &[Entry]) -> Vec<(Section, &[Entry])> {
    entries
        .chunk_by(|a, b| a.section == b.section)
        .map(|run| (run[0].section, run))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_optimizer_and_trick_is_listed_once_under_its_section_in_order() {
        let entries = registry();
        let mut names: Vec<&str> = entries.iter().map(Entry::name).collect();
        let all = OptimizerKind::ALL.len() + TrickKind::ALL.len();
        assert_eq!(names.len(), all);
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all, "listed twice");
        let sections: Vec<Section> = by_section(&entries).iter().map(|(s, _)| *s).collect();
        assert_eq!(
            sections,
            [
                Section::Optimizers(Group::Torch),
                Section::Optimizers(Group::Modern),
                Section::Optimizers(Group::Optax),
                Section::Tricks
            ]
        );
        let (_, tricks) = by_section(&entries).pop().expect("the tricks");
        let kinds: Vec<Item> = TrickKind::ALL.iter().map(|&k| Item::Trick(k)).collect();
        assert_eq!(
            tricks.iter().map(|e| e.item.clone()).collect::<Vec<_>>(),
            kinds
        );
    }

    #[test]
    fn an_entry_shows_the_defaults_a_spec_writes() {
        let adam = Entry::optimizer(OptimizerKind::Adam);
        assert_eq!(
            adam.defaults(),
            "lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0, amsgrad=false"
        );
        assert_eq!(
            adam.hyper[1].doc,
            "Decay of the first moment (torch's `betas[0]`)."
        );
        assert_eq!(adam.section, Section::Optimizers(Group::Torch));
        // The defaults parse back to the spec the entry starts from.
        let written = format!("{}({})", adam.name(), adam.defaults());
        assert_eq!(
            Item::Optimizer(OptimizerSpec::parse(&written).unwrap()),
            adam.item
        );
        let agc = Entry::trick(TrickKind::Agc);
        assert_eq!(agc.defaults(), "clipping=0.01, eps=0.001");
        assert_eq!(agc.doc, TrickKind::Agc.doc());
        assert_eq!(agc.hyper[0].doc, TrickKind::Agc.parameters()[0].doc);
        assert_eq!(Entry::trick(TrickKind::Centralize).defaults(), "");
        assert_eq!(
            Entry::trick(TrickKind::LossScaling).defaults(),
            "scale=dynamic"
        );
    }

    #[test]
    fn choosing_an_optimizer_starts_over_and_a_trick_goes_after_the_chain() {
        let current = ChainSpec::parse("sgd(lr=0.1, momentum=0.9) + agc(clipping=0.05)").unwrap();
        let adamw = Entry::optimizer(OptimizerKind::AdamW);
        assert_eq!(adamw.chosen(&current), "adamw(lr=0.001)");
        let ema = Entry::trick(TrickKind::Ema);
        assert_eq!(
            ema.chosen(&current),
            "sgd(lr=0.1, momentum=0.9) + agc(clipping=0.05) + ema(decay=0.999)"
        );
        let centralize = Entry::trick(TrickKind::Centralize);
        assert_eq!(
            centralize.chosen(&current),
            "sgd(lr=0.1, momentum=0.9) + agc(clipping=0.05) + centralize"
        );
        // Each trick, chosen, parses back to the chain with the trick's defaults after it; one
        // already in the chain is refused when the spec is confirmed.
        for &k in TrickKind::ALL {
            let parsed = ChainSpec::parse(&Entry::trick(k).chosen(&current));
            match k {
                TrickKind::Agc => {
                    assert_eq!(parsed.unwrap_err().message, "`agc` is written twice")
                }
                _ => {
                    let chain = parsed.unwrap();
                    assert_eq!(chain.base, current.base);
                    assert_eq!(chain.tricks, [current.tricks[0].clone(), TrickSpec::new(k)]);
                }
            }
        }
    }
}
