//! A reader's place in a stream: the next offset per partition.
//!
//! Written as `partition:offset` pairs joined by commas (`0:15,1:7`), the form SSE event ids,
//! record headers and committed consumer positions use.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions(BTreeMap<u32, u64>);

impl Positions {
    pub fn new() -> Self {
        Positions::default()
    }

    pub fn get(&self, partition: u32) -> Option<u64> {
        self.0.get(&partition).copied()
    }

    pub fn set(&mut self, partition: u32, next_offset: u64) {
        self.0.insert(partition, next_offset);
    }

    /// Moves a partition's position past `offset`, never backwards.
    pub fn advance_past(&mut self, partition: u32, offset: u64) {
        let next = self.0.entry(partition).or_insert(0);
        *next = (*next).max(offset + 1);
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.0.iter().map(|(&p, &o)| (p, o))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Positions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (p, o)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}:{o}")?;
        }
        Ok(())
    }
}

impl FromStr for Positions {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut positions = Positions::new();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (p, o) = pair.split_once(':').ok_or_else(|| format!("{pair:?}: expected partition:offset"))?;
            let p = p.parse().map_err(|_| format!("{pair:?}: partition is not a number"))?;
            let o = o.parse().map_err(|_| format!("{pair:?}: offset is not a number"))?;
            positions.set(p, o);
        }
        Ok(positions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_text() {
        let mut p = Positions::new();
        p.advance_past(1, 6);
        p.advance_past(0, 14);
        p.advance_past(0, 3);
        assert_eq!(p.to_string(), "0:15,1:7");
        assert_eq!("0:15, 1:7".parse::<Positions>().unwrap(), p);
        assert!("0-15".parse::<Positions>().is_err());
        assert!("".parse::<Positions>().unwrap().is_empty());
    }
}
