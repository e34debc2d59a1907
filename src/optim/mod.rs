//! Optimizers, exactly as torch.optim defines them, plus schedules and clipping.

/// A closed set of words a setting (or a command-line option) takes: the enum, its `ALL`, the
/// `NAMES` in the same order, and `name`/`from_name` between them.
macro_rules! words {
    (
        $(#[doc = $doc:literal])*
        $Name:ident { $( $(#[doc = $vdoc:literal])* $V:ident = $word:literal, )* }
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $Name {
            $( $(#[doc = $vdoc])* $V, )*
        }

        impl $Name {
            /// Every value, in the order the settings list them.
            pub const ALL: &'static [Self] = &[$( Self::$V, )*];
            /// The words for [`Self::ALL`], in the same order.
            pub const NAMES: &'static [&'static str] = &[$( $word, )*];

            /// The word for it.
            pub fn name(self) -> &'static str {
                match self {
                    $( Self::$V => $word, )*
                }
            }

            /// The value `word` names.
            pub fn from_name(word: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.name() == word)
            }
        }

        /// A hyper-parameter written as one of the words (`line_search_fn=strong_wolfe`).
        impl $crate::optim::spec::Hyper for $Name {
            const EXPECTS: &'static str = concat!("one of", $(" ", $word,)*);
            fn from_raw(raw: $crate::optim::spec::RawValue) -> ::std::result::Result<Self, String> {
                match raw {
                    $crate::optim::spec::RawValue::Text(w) => Self::from_name(w)
                        .ok_or_else(|| format!("must be one of {}", Self::NAMES.join(", "))),
                    _ => Err(format!("must be one of {}", Self::NAMES.join(", "))),
                }
            }
            fn to_value(&self) -> $crate::optim::spec::HyperValue {
                $crate::optim::spec::HyperValue::Word(self.name())
            }
        }
    };
}

/// A typed parameter struct, declared once for a registry (the optimizers', the tricks'): the
/// struct with its docs and the reference's defaults, its parameter table (names, one-line docs,
/// bounds), and reading and setting a parameter by name.
macro_rules! typed_params {
    (
        $(#[doc = $doc:literal])*
        $Name:ident {
            $( $(#[doc = $hdoc:literal])* $field:ident : $ty:ty = $default:expr => $bound:ident, )*
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $Name {
            $( $(#[doc = $hdoc])* pub $field: $ty, )*
        }

        impl Default for $Name {
            /// The reference implementation's defaults.
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $Name {
            /// Its parameters, in declaration order.
            const PARAMS: &'static [$crate::optim::spec::HyperParam] = &[
                $( $crate::optim::spec::HyperParam {
                    name: stringify!($field),
                    doc: concat!($($hdoc),*).trim_ascii(),
                    bound: $crate::optim::spec::Bound::$bound,
                }, )*
            ];

            /// Every parameter with its value, in declaration order.
            fn values(&self) -> Vec<(&'static str, $crate::optim::spec::HyperValue)> {
                vec![$( (
                    stringify!($field),
                    $crate::optim::spec::Hyper::to_value(&self.$field),
                ), )*]
            }

            /// None when `key` is not one of its parameters; Err: why the value is refused
            /// ("must be a finite number").
            fn set(
                &mut self,
                key: &str,
                raw: $crate::optim::spec::RawValue,
            ) -> Option<::std::result::Result<(), String>> {
                match key {
                    $( stringify!($field) => Some(
                        <$ty as $crate::optim::spec::Hyper>::from_raw(raw).map(|v| {
                            self.$field = v;
                        })
                    ), )*
                    _ => {
                        let _ = raw;
                        None
                    }
                }
            }
        }
    };
}

/// A lane rule's per-param state of `Option<Tensor>` fields: its lanes are those of every
/// tensor ([`lanes::LaneSlices`]).
macro_rules! lane_slices {
    ($State:ident { $($field:ident),* $(,)? }) => {
        impl $crate::optim::lanes::LaneSlices for $State {
            fn pick(
                &self,
                _keep: &[usize],
                take: &dyn Fn(&Tensor) -> Result<Tensor>,
            ) -> Result<Self> {
                Ok(Self { $( $field: $crate::optim::lanes::pick_opt(&self.$field, take)?, )* })
            }
        }
    };
}

/// Lane rules as single-run [`step::UpdateRule`]s: a run is one lane (`Rule => State`).
macro_rules! one_lane {
    ($($Rule:ident => $State:ident),* $(,)?) => {
        $(
            impl $crate::optim::step::UpdateRule for $Rule {
                type State = $State;

                fn step(
                    &self,
                    state: &mut $State,
                    param: &Tensor,
                    grad: &Tensor,
                    lr: f64,
                    t: u64,
                ) -> Result<Tensor> {
                    let lanes = $crate::optim::lanes::Lanes::one(self, &lr);
                    <$Rule as $crate::optim::lanes::LaneRule>::step_lanes(
                        &lanes, state, param, grad, t,
                    )
                }
            }
        )*
    };
}

pub mod adafactor;
pub mod catalogue;
pub mod chain;
pub mod classic;
pub mod custom;
pub mod groups;
pub mod kernels;
pub mod lanes;
pub mod lbfgs;
pub mod lowp;
pub mod muon;
pub mod optax;
pub mod prodigy;
pub mod schedule;
pub mod schedule_free;
pub mod settings;
pub mod spec;
pub mod step;
pub mod torch_more;
pub mod tricks;
