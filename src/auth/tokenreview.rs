//! Kubernetes ServiceAccount tokens, checked with a TokenReview.
//! (To be built: see issue 10.)
