//! OpenClaw-compatible state files. (Being written: see the helper's task.)
