//! Upstream answer classification. (Being written: see the helper's task.)
