//! Environment keys in SPEC §5 priority. (Being written: see the helper's task.)
