//! Resource limits of a job.
//!
//! Clients send [`Limits`] with any field unset; [`Limits::resolve`] fills
//! the gaps from defaults and refuses values above the maxima, naming the
//! field. The runner enforces the resolved values; the sandbox (cgroup or
//! pod) around it is the safety net.

use serde::{Deserialize, Serialize};

/// Limits as a client sends them; `None` means "the default".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock time from start to kill, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_time_ms: Option<u64>,
    /// CPU time (user + system, all processes), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_ms: Option<u64>,
    /// Memory in KiB (address space or runtime heap, see
    /// [`MemoryModel`](crate::MemoryModel)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_kb: Option<u64>,
    /// Processes and threads the program may have at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_processes: Option<u64>,
    /// Bytes kept of stdout and of stderr each; more ends the run with
    /// `output_limit_exceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
    /// Largest file the program may write, in KiB (SIGXFSZ past it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_size_kb: Option<u64>,
}

/// Limits with every value decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedLimits {
    /// See [`Limits::wall_time_ms`].
    pub wall_time_ms: u64,
    /// See [`Limits::cpu_time_ms`].
    pub cpu_time_ms: u64,
    /// See [`Limits::memory_kb`].
    pub memory_kb: u64,
    /// See [`Limits::max_processes`].
    pub max_processes: u64,
    /// See [`Limits::max_output_bytes`].
    pub max_output_bytes: u64,
    /// See [`Limits::max_file_size_kb`].
    pub max_file_size_kb: u64,
}

/// A limit a client may not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Zero is never a usable limit.
    #[error("limits.{field} must be greater than 0")]
    Zero {
        /// The offending field's name.
        field: &'static str,
    },
    /// Above the configured maximum.
    #[error("limits.{field} is {value}, above the maximum of {max}")]
    AboveMaximum {
        /// The offending field's name.
        field: &'static str,
        /// What the client asked for.
        value: u64,
        /// The most that is allowed.
        max: u64,
    },
}

impl LimitError {
    /// The name of the field at fault, e.g. `"memory_kb"`.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Zero { field } | Self::AboveMaximum { field, .. } => field,
        }
    }
}

impl ResolvedLimits {
    /// Defaults for running a program.
    pub const DEFAULT: Self = Self {
        wall_time_ms: 10_000,
        cpu_time_ms: 5_000,
        memory_kb: 262_144,
        max_processes: 64,
        max_output_bytes: 1_048_576,
        max_file_size_kb: 10_240,
    };

    /// The most any run may ask for, unless an operator sets lower maxima.
    pub const MAXIMUM: Self = Self {
        wall_time_ms: 60_000,
        cpu_time_ms: 30_000,
        memory_kb: 2_097_152,
        max_processes: 512,
        max_output_bytes: 16_777_216,
        max_file_size_kb: 262_144,
    };

    /// Defaults for a compile step (compilers are heavier than programs).
    pub const COMPILE_DEFAULT: Self = Self {
        wall_time_ms: 20_000,
        cpu_time_ms: 15_000,
        memory_kb: 1_048_576,
        max_processes: 128,
        max_output_bytes: 65_536,
        max_file_size_kb: 262_144,
    };

    /// The most any compile step may ask for.
    pub const COMPILE_MAXIMUM: Self = Self {
        wall_time_ms: 60_000,
        cpu_time_ms: 60_000,
        memory_kb: 2_097_152,
        max_processes: 512,
        max_output_bytes: 1_048_576,
        max_file_size_kb: 1_048_576,
    };

    /// Builds limits from values in wire order (the order of
    /// [`ResolvedLimits::fields`]).
    pub fn from_values(values: [u64; 6]) -> Self {
        let [
            wall_time_ms,
            cpu_time_ms,
            memory_kb,
            max_processes,
            max_output_bytes,
            max_file_size_kb,
        ] = values;
        Self {
            wall_time_ms,
            cpu_time_ms,
            memory_kb,
            max_processes,
            max_output_bytes,
            max_file_size_kb,
        }
    }

    /// The fields as `(name, value)` pairs, in wire order.
    pub fn fields(&self) -> [(&'static str, u64); 6] {
        [
            ("wall_time_ms", self.wall_time_ms),
            ("cpu_time_ms", self.cpu_time_ms),
            ("memory_kb", self.memory_kb),
            ("max_processes", self.max_processes),
            ("max_output_bytes", self.max_output_bytes),
            ("max_file_size_kb", self.max_file_size_kb),
        ]
    }
}

impl Limits {
    /// The client's values as `(name, value)` pairs, in wire order.
    pub fn fields(&self) -> [(&'static str, Option<u64>); 6] {
        [
            ("wall_time_ms", self.wall_time_ms),
            ("cpu_time_ms", self.cpu_time_ms),
            ("memory_kb", self.memory_kb),
            ("max_processes", self.max_processes),
            ("max_output_bytes", self.max_output_bytes),
            ("max_file_size_kb", self.max_file_size_kb),
        ]
    }

    /// Fills unset fields from `defaults` and checks every value against
    /// `maxima`.
    ///
    /// # Errors
    /// [`LimitError`] naming the first field that is zero or above its
    /// maximum. A default above the maximum is clamped, not an error: it is
    /// the operator's choice, not the client's.
    pub fn resolve(
        &self,
        defaults: &ResolvedLimits,
        maxima: &ResolvedLimits,
    ) -> Result<ResolvedLimits, LimitError> {
        let mut out = [0u64; 6];
        let asked = self.fields();
        let defaults = defaults.fields();
        let maxima = maxima.fields();
        for i in 0..6 {
            let (field, max) = maxima[i];
            out[i] = match asked[i].1 {
                Some(0) => return Err(LimitError::Zero { field }),
                Some(value) if value > max => {
                    return Err(LimitError::AboveMaximum { field, value, max });
                }
                Some(value) => value,
                None => defaults[i].1.min(max),
            };
        }
        Ok(ResolvedLimits::from_values(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_take_defaults() {
        let got = Limits::default()
            .resolve(&ResolvedLimits::DEFAULT, &ResolvedLimits::MAXIMUM)
            .unwrap();
        assert_eq!(got, ResolvedLimits::DEFAULT);
    }

    #[test]
    fn set_fields_are_kept() {
        let asked = Limits {
            memory_kb: Some(65_536),
            max_processes: Some(16),
            ..Limits::default()
        };
        let got = asked
            .resolve(&ResolvedLimits::DEFAULT, &ResolvedLimits::MAXIMUM)
            .unwrap();
        assert_eq!(got.memory_kb, 65_536);
        assert_eq!(got.max_processes, 16);
        assert_eq!(got.wall_time_ms, ResolvedLimits::DEFAULT.wall_time_ms);
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (
                Limits {
                    cpu_time_ms: Some(0),
                    ..Limits::default()
                },
                "cpu_time_ms",
                "zero",
            ),
            (
                Limits {
                    memory_kb: Some(u64::MAX),
                    ..Limits::default()
                },
                "memory_kb",
                "above maximum",
            ),
        ];
        for (limits, field, why) in cases {
            let err = limits
                .resolve(&ResolvedLimits::DEFAULT, &ResolvedLimits::MAXIMUM)
                .unwrap_err();
            assert_eq!(err.field(), field, "{why}");
            assert!(err.to_string().contains(field), "{why}: {err}");
        }
    }

    #[test]
    fn values_round_trip_in_wire_order() {
        let l = ResolvedLimits::MAXIMUM;
        assert_eq!(ResolvedLimits::from_values(l.fields().map(|(_, v)| v)), l);
    }

    #[test]
    fn defaults_above_maxima_are_clamped() {
        let mut maxima = ResolvedLimits::MAXIMUM;
        maxima.wall_time_ms = 1_000;
        let got = Limits::default()
            .resolve(&ResolvedLimits::DEFAULT, &maxima)
            .unwrap();
        assert_eq!(got.wall_time_ms, 1_000);
    }
}
