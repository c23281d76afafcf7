//! capabilities: the CapabilityStatement, generated from what the server
//! really does (the registry of supported search parameters and the
//! interactions implemented in this folder) so that it cannot list what
//! does not work.

use serde_json::{Value, json};

use crate::fhir::search::model::ParamType;
use crate::fhir::search::registry::Registry;
use crate::security::audit::AUDIT_EVENT;

pub fn capability_statement(base: &str, software_version: &str, published: &str) -> Value {
    let reg = Registry::r4();
    let resources: Vec<Value> = reg
        .resource_types()
        .iter()
        .map(|t| {
            let params = reg.params_of(t);
            let search_params: Vec<Value> = params
                .iter()
                .filter(|d| d.is_supported())
                .map(|d| json!({"name": d.code, "definition": d.url, "type": d.kind.as_str()}))
                .collect();
            let includes: Vec<Value> = params
                .iter()
                .filter(|d| d.kind == ParamType::Reference && d.is_supported())
                .map(|d| json!(format!("{t}:{}", d.code)))
                .collect();
            let revincludes: Vec<Value> = reg
                .resource_types()
                .iter()
                .flat_map(|src| {
                    reg.params_of(src)
                        .into_iter()
                        .filter(|d| {
                            d.kind == ParamType::Reference && d.is_supported() && d.targets.iter().any(|x| x == t)
                        })
                        .map(move |d| json!(format!("{src}:{}", d.code)))
                })
                .collect();
            // The audit trail is written by the gateway only: clients read
            // and search it (with a scope naming AuditEvent).
            if t == AUDIT_EVENT {
                let audit_params: Vec<Value> = params
                    .iter()
                    .filter(|d| crate::security::trail::SEARCH_PARAMS.contains(&d.code.as_str()))
                    .map(|d| json!({"name": d.code, "definition": d.url, "type": d.kind.as_str()}))
                    .collect();
                return json!({
                    "type": t,
                    "documentation": "Written by the gateway for every interaction; read and search need a scope naming AuditEvent (e.g. system/AuditEvent.rs), a wildcard scope does not grant them. Clients are searched by agent:identifier=<client id>; results sort by date (_sort=-date: newest first).",
                    "interaction": [{"code": "read"}, {"code": "vread"}, {"code": "search-type"}],
                    "versioning": "versioned",
                    "readHistory": false,
                    "updateCreate": false,
                    "conditionalCreate": false,
                    "conditionalRead": "not-supported",
                    "conditionalUpdate": false,
                    "conditionalDelete": "not-supported",
                    "referencePolicy": ["literal", "logical"],
                    "searchParam": audit_params,
                });
            }
            json!({
                "type": t,
                "interaction": [
                    {"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "patch"},
                    {"code": "delete"}, {"code": "history-instance"}, {"code": "history-type"},
                    {"code": "create"}, {"code": "search-type"}
                ],
                "versioning": "versioned",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "referencePolicy": ["literal", "logical"],
                "searchInclude": includes,
                "searchRevInclude": revincludes,
                "searchParam": search_params,
            })
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": published,
        "publisher": "apa-gateway",
        "kind": "instance",
        "software": {"name": "apa-gateway", "version": software_version},
        "implementation": {"description": "apa-gateway FHIR R4 server", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [
                {"code": "transaction"}, {"code": "batch"},
                {"code": "search-system"}, {"code": "history-system"}
            ],
            "searchParam": [
                {"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"},
                {"name": "_lastUpdated", "type": "date", "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"},
                {"name": "_tag", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-tag"},
                {"name": "_profile", "type": "uri", "definition": "http://hl7.org/fhir/SearchParameter/Resource-profile"},
                {"name": "_security", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-security"}
            ]
        }]
    })
}
