//! OAuth 2.1 access tokens (JWT) from one issuer, checked against its JWKS.
//! (To be built: see issue 10.)
