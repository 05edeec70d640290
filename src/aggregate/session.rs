//! A client's session of the aggregated endpoint, and the member sessions it
//! holds: one real [`Session`] per member the client has sent a request to
//! (made lazily, so listing from the catalogs still starts nothing), with the
//! client's negotiated version and capabilities, so a member asks for
//! sampling, elicitation or roots exactly when the client declared them.
//!
//! What a member sends the client leaves through [`outbound`]: its
//! server→client request ids get the member's name as a prefix (ids are
//! unique per member, not across them), and [`AggregateSession::one_way`]
//! maps the client's answers back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::auth::Caller;
use crate::mcp::call;
use crate::mcp::error::RequestError;
use crate::mcp::http::streamable::roots_changed;
use crate::mcp::message::{self as jsonrpc, Kind, Method};
use crate::mcp::sessions::{ClientCapabilities, Session, SseEvent, StreamKey, STANDALONE};
use crate::server::Server;

/// Between a member's name and its own id of a request it makes of the client.
pub const ID_SEPARATOR: char = '#';
/// Messages queued for one client stream of the aggregated session.
pub const STREAM_QUEUE: usize = 256;

/// One member session, ended with its link (DELETE, expiry, or a new link).
struct Link {
    server: Arc<Server>,
    session: Arc<Session>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.server.sessions().end(&self.session.id);
    }
}

struct State {
    protocol_version: String,
    capabilities: ClientCapabilities,
    last_used: Instant,
    /// Member name → its session.
    members: HashMap<String, Link>,
    /// What `logging/setLevel` asked last: applied to each new member session.
    log_level: Option<Value>,
    /// The client's id of a request in flight (as JSON text) → the member handling it.
    in_flight: HashMap<String, String>,
    /// The client's GET stream (the legacy transport: its one stream).
    outlet: Option<mpsc::Sender<Value>>,
}

pub struct AggregateSession {
    pub id: String,
    pub owner: Arc<Caller>,
    /// The 2024-11-05 HTTP+SSE transport: every message goes on the one stream.
    pub legacy: bool,
    state: Mutex<State>,
    /// `true` once the session ended; dropped with it.
    ended: watch::Sender<bool>,
}

impl AggregateSession {
    pub fn new(
        owner: Arc<Caller>,
        protocol_version: &str,
        capabilities: ClientCapabilities,
        legacy: bool,
    ) -> Arc<Self> {
        let bytes: [u8; 16] = rand::random();
        Arc::new(AggregateSession {
            id: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            owner,
            legacy,
            state: Mutex::new(State {
                protocol_version: protocol_version.to_string(),
                capabilities,
                last_used: Instant::now(),
                members: HashMap::new(),
                log_level: None,
                in_flight: HashMap::new(),
                outlet: None,
            }),
            ended: watch::channel(false).0,
        })
    }

    /// A std mutex: never held across an `.await`.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("aggregated session lock poisoned")
    }

    pub fn belongs_to(&self, caller: &Caller) -> bool {
        self.owner.subject == caller.subject && self.owner.via == caller.via
    }

    pub fn touch(&self) {
        self.lock().last_used = Instant::now();
    }

    pub fn idle(&self) -> Duration {
        self.lock().last_used.elapsed()
    }

    pub fn last_used(&self) -> Instant {
        self.lock().last_used
    }

    pub fn protocol_version(&self) -> String {
        self.lock().protocol_version.clone()
    }

    /// Records what the client negotiated (the legacy transport learns it after the stream opens).
    pub fn negotiated(&self, protocol_version: &str, capabilities: ClientCapabilities) {
        let mut state = self.lock();
        state.protocol_version = protocol_version.to_string();
        state.capabilities = capabilities;
    }

    /// Resolves once the session has ended.
    pub fn ended(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut ended = self.ended.subscribe();
        async move {
            // An error: the session is gone, which is an end too.
            let _ = ended.wait_for(|ended| *ended).await;
        }
    }

    /// Ends the session: every member session, and the client's stream.
    pub fn close(&self) {
        let (links, outlet) = {
            let mut state = self.lock();
            (std::mem::take(&mut state.members), state.outlet.take())
        };
        drop((links, outlet));
        self.ended.send_replace(true);
        debug!(session = %self.id, "aggregated session ended");
    }

    /// Sends `message` on the client's stream (the legacy transport's answers).
    pub async fn send(&self, message: Value) {
        let outlet = self.lock().outlet.clone();
        if let Some(outlet) = outlet {
            let _ = outlet.send(message).await;
        }
    }

    /// Connects the client's stream: what every member session sends on its
    /// own goes there from now on (a newer stream replaces an older one).
    pub fn attach(&self, outlet: mpsc::Sender<Value>) {
        let mut state = self.lock();
        for (name, link) in &state.members {
            relay(name.clone(), link.session.attach(None).1, outlet.clone());
        }
        state.outlet = Some(outlet);
    }

    /// This session's session on `server`, made now if it has none there (or
    /// the one it had ended: the member was removed and declared again, or
    /// its sessions expired). A new one gets the remembered log level.
    pub async fn member(
        &self,
        server: &Arc<Server>,
        caller: &Caller,
    ) -> Result<Arc<Session>, RequestError> {
        let (session, log_level) = {
            let mut state = self.lock();
            if let Some(link) = state.members.get(server.name()) {
                if Arc::ptr_eq(&link.server, server)
                    && server.sessions().get(&link.session.id).is_some()
                {
                    link.session.touch();
                    return Ok(link.session.clone());
                }
            }
            let session = server.sessions().create(
                self.owner.clone(),
                &state.protocol_version,
                state.capabilities,
                self.legacy,
            )?;
            debug!(session = %self.id, member = server.name(), member_session = %session.id, "member session created");
            if let Some(outlet) = &state.outlet {
                relay(
                    server.name().to_string(),
                    session.attach(None).1,
                    outlet.clone(),
                );
            }
            if state.capabilities.roots {
                roots_changed(server, &session);
            }
            let link = Link {
                server: server.clone(),
                session: session.clone(),
            };
            state.members.insert(server.name().to_string(), link);
            (session, state.log_level.clone())
        };
        if let Some(level) = log_level {
            let message = set_level_request(level);
            if let Err(error) =
                call::request(server, caller, Some(&session), STANDALONE, message).await
            {
                warn!(member = server.name(), %error, "logging/setLevel on a new member session failed");
            }
        }
        Ok(session)
    }

    /// `request` to one member in this session. With `events`, what the
    /// member sends about the request goes there before the response (an
    /// SSE answer); without, it goes on the client's GET stream.
    pub async fn forward(
        &self,
        server: &Arc<Server>,
        caller: &Caller,
        request: Value,
        events: Option<&mpsc::Sender<Value>>,
    ) -> Result<Value, RequestError> {
        let session = self.member(server, caller).await?;
        let client_id = request["id"].to_string();
        self.lock()
            .in_flight
            .insert(client_id.clone(), server.name().to_string());
        let (key, relayed): (StreamKey, _) = match events {
            Some(events) if !self.legacy => {
                let key = server.sessions().new_stream_key();
                let (_, stream) = session.open_request_stream(key);
                (
                    key,
                    Some(relay(server.name().to_string(), stream, events.clone())),
                )
            }
            _ => (STANDALONE, None),
        };
        let response = call::request(server, caller, Some(&session), key, request).await;
        self.lock().in_flight.remove(&client_id);
        if let Some(relayed) = relayed {
            // Its stream ends now: what it carried goes out before the response.
            session.finish_stream(key);
            let _ = relayed.await;
        }
        response
    }

    /// `logging/setLevel`: remembered for member sessions made later, and
    /// applied now to those whose member runs (a stopped one is not started).
    pub async fn set_level(&self, caller: &Caller, request: &Value) -> Value {
        let id = jsonrpc::id(request);
        let Some(level) = request.pointer("/params/level").cloned() else {
            return jsonrpc::error(id, jsonrpc::INVALID_PARAMS, "level required");
        };
        let running: Vec<(Arc<Server>, Arc<Session>)> = {
            let mut state = self.lock();
            state.log_level = Some(level.clone());
            state
                .members
                .values()
                .filter(|link| link.server.running_instance().is_some())
                .map(|link| (link.server.clone(), link.session.clone()))
                .collect()
        };
        let applied = running.iter().map(|(server, session)| {
            let message = set_level_request(level.clone());
            call::request(server, caller, Some(session), STANDALONE, message)
        });
        for outcome in futures::future::join_all(applied).await {
            if let Err(error) = outcome {
                warn!(%error, "logging/setLevel on a member failed");
            }
        }
        jsonrpc::result(id, json!({}))
    }

    /// A notification or response from the client: to the member it concerns.
    pub fn one_way(&self, message: Value) {
        let (target, message) = match (jsonrpc::classify(&message), Method::of(&message)) {
            (Some(Kind::Response), _) => match inbound_response(message) {
                Some((member, response)) => (Target::One(member), response),
                None => return,
            },
            (_, Method::Cancelled) => {
                let id = message
                    .pointer("/params/requestId")
                    .map(Value::to_string)
                    .unwrap_or_default();
                match self.lock().in_flight.get(&id) {
                    Some(member) => (Target::One(member.clone()), message),
                    None => return,
                }
            }
            (_, Method::RootsListChanged) => (Target::Roots, message),
            // `initialized` and the like: mcpod speaks for itself to each member.
            _ => return,
        };
        let links: Vec<(Arc<Server>, Arc<Session>)> = {
            let state = self.lock();
            state
                .members
                .iter()
                .filter(|(name, _)| match &target {
                    Target::One(member) => *name == member,
                    Target::Roots => true,
                })
                .map(|(_, link)| (link.server.clone(), link.session.clone()))
                .collect()
        };
        for (server, session) in links {
            match target {
                Target::Roots => roots_changed(&server, &session),
                Target::One(_) => call::one_way(&server, Some(&session), message.clone()),
            }
        }
    }
}

enum Target {
    One(String),
    Roots,
}

fn set_level_request(level: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": "mcpod-set-level", "method": "logging/setLevel", "params": {"level": level}})
}

/// A member's message as the aggregated client gets it: a request it makes
/// of the client (or its withdrawal) names it by `<member>#<id>`.
pub fn outbound(member: &str, message: &Value) -> Value {
    let mut message = message.clone();
    let tag = |id: &Value| {
        let own = id.as_str().map_or_else(|| id.to_string(), str::to_string);
        json!(format!("{member}{ID_SEPARATOR}{own}"))
    };
    match jsonrpc::classify(&message) {
        Some(Kind::Request) => message["id"] = tag(&message["id"]),
        Some(Kind::Notification) if Method::of(&message) == Method::Cancelled => {
            if let Some(id) = message.pointer_mut("/params/requestId") {
                *id = tag(id);
            }
        }
        _ => {}
    }
    message
}

/// The client's answer to a member's request: the member, and the answer
/// under the id the member session gave it.
pub fn inbound_response(mut response: Value) -> Option<(String, Value)> {
    let tagged = response.get("id")?.as_str()?.to_string();
    let (member, own) = tagged.rsplit_once(ID_SEPARATOR)?;
    response["id"] = json!(own);
    Some((member.to_string(), response))
}

/// Moves a member session's stream to the client's, rewritten by [`outbound`],
/// until either ends.
fn relay(
    member: String,
    mut events: mpsc::Receiver<SseEvent>,
    to: mpsc::Sender<Value>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            // A priming event carries no message.
            if event.message.is_null() {
                continue;
            }
            if to.send(outbound(&member, &event.message)).await.is_err() {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_request_id_is_tagged_and_the_answer_maps_back() {
        let asked = json!({"jsonrpc": "2.0", "id": "mcpod-s3", "method": "sampling/createMessage"});
        let out = outbound("everything", &asked);
        assert_eq!(out["id"], "everything#mcpod-s3");
        let answer = json!({"jsonrpc": "2.0", "id": out["id"], "result": {}});
        let (member, back) = inbound_response(answer).unwrap();
        assert_eq!(
            (member.as_str(), &back["id"]),
            ("everything", &json!("mcpod-s3"))
        );
        let withdrawn = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "mcpod-s3"}});
        assert_eq!(
            outbound("a", &withdrawn)["params"]["requestId"],
            "a#mcpod-s3"
        );
        let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1}});
        assert_eq!(outbound("a", &progress), progress);
        assert!(inbound_response(json!({"jsonrpc": "2.0", "id": 4, "result": {}})).is_none());
    }
}
