//! The Kubernetes API client, built like kube-rs's own (`Client::try_from`)
//! but over a TCP connector that sets `TCP_NODELAY`: kube-rs builds its
//! `HttpConnector` privately and leaves Nagle's algorithm on, so a request
//! written in two pieces (headers, then body: every patch, every attach
//! frame) can wait for the API server's delayed ACK.
//!
//! The rest of the stack is kube-rs's, from its public parts: TLS from the
//! config (rustls), the connect/read/write timeouts, the base URI, retries of
//! server errors, authentication (tokens, exec plugins, client certificates)
//! and extra headers. Connection upgrades (`attach`) go through it unchanged.
//! A proxy in the config is left to kube-rs itself, which refuses one this
//! build has no feature for, with its own error.

use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::retry::RetryPolicy;
use kube::client::{ClientBuilder, ConfigExt};
use kube::{Client, Config};
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder};

/// The TCP connector under TLS: `TCP_NODELAY` on every connection it opens.
fn tcp_connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    // https:// URLs too: TLS is the layer above.
    connector.enforce_http(false);
    connector.set_nodelay(true);
    connector
}

/// TLS (for an https:// cluster) over [`tcp_connector`], with the config's timeouts.
fn connector(
    config: &Config,
) -> Result<TimeoutConnector<hyper_rustls::HttpsConnector<HttpConnector>>, kube::Error> {
    let mut connector =
        TimeoutConnector::new(config.rustls_https_connector_with_connector(tcp_connector())?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    Ok(connector)
}

/// A client for `config` whose connections set `TCP_NODELAY`.
pub fn client(config: Config) -> Result<Client, kube::Error> {
    // kube-rs's own client, for what only it can do: proxies, and the expiry
    // of a client certificate an exec plugin issued (read through a private
    // helper). Building it opens no connection.
    let standard = Client::try_from(config.clone())?;
    if config.proxy_url.is_some() {
        return Ok(standard);
    }
    let http = hyper_util::client::legacy::Builder::new(TokioExecutor::new())
        .build::<_, kube::client::Body>(connector(&config)?);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(http);
    Ok(
        ClientBuilder::new(service, config.default_namespace.clone())
            .with_valid_until(*standard.valid_until())
            .build(),
    )
}

/// [`client`] for the in-cluster config or the kubeconfig, as `Client::try_default` finds it.
pub async fn infer() -> Result<Client, kube::Error> {
    client(Config::infer().await.map_err(kube::Error::InferConfig)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_rustls::MaybeHttpsStream;
    use tower::Service;

    /// The connections the client opens, over plain HTTP as in a test cluster
    /// (TLS sits above the same TCP connector), have Nagle's algorithm off.
    #[tokio::test]
    async fn api_connections_set_tcp_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let config = Config::new(url.parse().unwrap());
        let mut connector = connector(&config).unwrap();
        let connection = connector.call(url.parse().unwrap()).await.unwrap();
        let (_accepted, _) = listener.accept().await.unwrap();
        let MaybeHttpsStream::Http(tcp) = connection.get_ref() else {
            panic!("an http:// URL is served without TLS");
        };
        assert!(tcp.inner().nodelay().unwrap(), "TCP_NODELAY is set");
    }

    /// The client itself builds for a plain and a TLS cluster URL.
    #[tokio::test]
    async fn builds_for_http_and_https_clusters() {
        for url in ["http://127.0.0.1:1", "https://127.0.0.1:1"] {
            let client = client(Config::new(url.parse().unwrap())).unwrap();
            assert_eq!(client.default_namespace(), "default");
        }
    }
}
