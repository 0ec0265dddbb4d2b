//! Model extraction and `@profile` pinning. (Being written: see the helper's task.)
