//! What Basiq (and what stands in front of it) really sends beyond the tidy shapes: one item
//! of a list in a shape a client cannot read, `/connectors` entries without
//! `institution.logo`, and a gateway's HTML page or an empty body instead of Basiq's error
//! envelope.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Simulator;

/// How one item (a connection or a job, by id) is served wrong, in lists and on its own.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ItemFault {
    /// Sets one top-level field to `value` (`"steps": null`, `"created": "yesterday"`, an id
    /// with a slash).
    Field { field: String, value: Value },
    /// Leaves one top-level field out.
    Remove { field: String },
    /// Serves `value` in place of the item (a shape nobody knows: a string, an array).
    Replace { value: Value },
}

impl ItemFault {
    /// A timestamp field that is not one.
    pub fn bad_timestamp(field: &str) -> Self {
        Self::Field {
            field: field.to_owned(),
            value: json!("yesterday at noon"),
        }
    }

    /// `"field": null`, e.g. `"steps": null`.
    pub fn null(field: &str) -> Self {
        Self::Field {
            field: field.to_owned(),
            value: Value::Null,
        }
    }

    /// Something that is not an object at all.
    pub fn unknown_shape() -> Self {
        Self::Replace {
            value: json!(["job", 42, {"what": "is this"}]),
        }
    }

    /// The item served with this id instead (e.g. one outside `[A-Za-z0-9-]`).
    pub fn id(id: &str) -> Self {
        Self::Field {
            field: "id".to_owned(),
            value: json!(id),
        }
    }

    fn apply(&self, mut item: Value) -> Value {
        match self {
            Self::Field { field, value } => {
                if let Some(o) = item.as_object_mut() {
                    o.insert(field.clone(), value.clone());
                }
                item
            }
            Self::Remove { field } => {
                if let Some(o) = item.as_object_mut() {
                    o.remove(field);
                }
                item
            }
            Self::Replace { value } => value.clone(),
        }
    }
}

/// The simulator's shape switches.
#[derive(Debug, Default)]
pub(super) struct Shapes {
    /// Item id -> how it is served wrong.
    items: HashMap<String, ItemFault>,
    /// `/connectors` entries leave out `institution.logo`.
    connectors_without_logo: bool,
}

impl Shapes {
    /// The item `id` as served: `item` itself, or mangled as scripted.
    pub(super) fn item(&self, id: &str, item: Value) -> Value {
        match self.items.get(id) {
            Some(fault) => fault.apply(item),
            None => item,
        }
    }

    /// A `/connectors` entry as served: with a logo unless switched off.
    pub(super) fn connector(&self, mut entry: Value) -> Value {
        if !self.connectors_without_logo {
            let id = entry["id"].as_str().unwrap_or_default().to_owned();
            if let Some(institution) = entry["institution"].as_object_mut() {
                institution.insert(
                    "logo".to_owned(),
                    json!({
                        "type": "image",
                        "colors": {"primary": "#0a6ebd"},
                        "links": {
                            "full": format!("https://cdn.basiq.io/institutions/logos/color/{id}.svg"),
                            "square": format!("https://cdn.basiq.io/institutions/logos/square/{id}.svg"),
                        },
                    }),
                );
            }
        }
        entry
    }
}

impl Simulator {
    /// Serves the connection or job `item_id` the way `fault` says, in lists and on its own,
    /// until [`Simulator::clear_item_faults`]. The item keeps working inside the simulator.
    pub fn mangle_item(&self, item_id: &str, fault: ItemFault) {
        tracing::info!(item_id, ?fault, "simulator item fault set");
        self.lock().shapes.items.insert(item_id.to_owned(), fault);
    }

    /// Serves every item as it is again.
    pub fn clear_item_faults(&self) {
        self.lock().shapes.items.clear();
    }

    /// `/connectors` entries without `institution.logo` (`true`), or with one, as Basiq's
    /// spec shows them (`false`, the default).
    pub fn set_connectors_without_logo(&self, without: bool) {
        self.lock().shapes.connectors_without_logo = without;
    }
}

/// What a gateway in front of Basiq answers: an HTML page, not Basiq's envelope.
pub(super) fn gateway_page(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND);
    let reason = status.canonical_reason().unwrap_or("Error");
    let body = format!(
        "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n\
         <center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n\
         </body>\r\n</html>\r\n",
        code = status.as_u16()
    );
    (status, [(CONTENT_TYPE, "text/html")], body).into_response()
}

/// A status with nothing in the body.
pub(super) fn empty_body(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND);
    status.into_response()
}
