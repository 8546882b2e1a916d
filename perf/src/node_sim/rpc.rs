//! BitShares JSON-RPC: request shapes, the API ids, the methods the simulator
//! answers, and the error format of the real node.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use super::chain::{
    block_id, format_time, mix64, Chain, ChainParams, COMMITTEE, MAINNET_CHAIN_ID, WITNESSES,
};
use super::HeadUpdate;

/// API ids a login hands out (fixed, as the public nodes answer them).
pub(crate) const API_LOGIN: u64 = 1;
pub(crate) const API_DATABASE: u64 = 2;
pub(crate) const API_NETWORK_BROADCAST: u64 = 3;
pub(crate) const API_HISTORY: u64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Login,
    Database,
    NetworkBroadcast,
    History,
}

fn api_by_name(name: &str) -> Option<Api> {
    match name {
        "login" => Some(Api::Login),
        "database" => Some(Api::Database),
        "network_broadcast" => Some(Api::NetworkBroadcast),
        "history" => Some(Api::History),
        _ => None,
    }
}

fn api_by_id(id: u64) -> Option<Api> {
    match id {
        // 0 is the database API on nodes that register it first.
        0 | API_DATABASE => Some(Api::Database),
        API_LOGIN => Some(Api::Login),
        API_NETWORK_BROADCAST => Some(Api::NetworkBroadcast),
        API_HISTORY => Some(Api::History),
        _ => None,
    }
}

/// Objects that never change while the node runs, serialized once.
pub(crate) struct Statics {
    global_properties: String,
    config: String,
    chain_properties: String,
    core_asset: String,
}

impl Statics {
    pub fn new(p: ChainParams) -> Self {
        let parameters = json!({
            "current_fees": {
                "parameters": [
                    [0, {"fee": 86869, "price_per_kbyte": 48260}],
                    [1, {"fee": 482}],
                    [2, {"fee": 9651}],
                    [3, {"fee": 1930}],
                    [5, {"basic_fee": 96515, "premium_fee": 4825761, "price_per_kbyte": 48260}],
                    [6, {"fee": 1930, "price_per_kbyte": 48260}],
                    [19, {"fee": 9651}],
                ],
                "scale": 10000,
            },
            "block_interval": p.block_interval_secs(),
            "maintenance_interval": p.maintenance_interval_secs,
            "maintenance_skip_slots": p.maintenance_skip_slots,
            "committee_proposal_review_period": 1_209_600,
            "maximum_transaction_size": 98_304,
            "maximum_block_size": 2_097_152,
            "maximum_time_until_expiration": 86_400,
            "maximum_proposal_lifetime": 2_419_200,
            "maximum_asset_whitelist_authorities": 10,
            "maximum_asset_feed_publishers": 10,
            "maximum_witness_count": 1001,
            "maximum_committee_count": 1001,
            "maximum_authority_membership": 10,
            "reserve_percent_of_fee": 2000,
            "network_percent_of_fee": 2000,
            "lifetime_referrer_percent_of_fee": 3000,
            "cashback_vesting_period_seconds": 31_536_000,
            "cashback_vesting_threshold": 10_000_000,
            "count_non_member_votes": true,
            "allow_non_member_whitelists": false,
            "witness_pay_per_block": 35_000,
            "worker_budget_per_day": "50000000000",
            "max_predicate_opcode": 1,
            "fee_liquidation_threshold": 10_000_000,
            "accounts_per_fee_scale": 1000,
            "account_fee_scale_bitshifts": 4,
            "max_authority_depth": 2,
            "extensions": {},
        });
        let witnesses: Vec<String> = WITNESSES.iter().map(|w| format!("1.6.{w}")).collect();
        let committee: Vec<String> = COMMITTEE.iter().map(|c| format!("1.5.{c}")).collect();
        // Field order as the real node prints it.
        let global_properties = format!(
            r#"{{"id":"2.0.0","parameters":{},"next_available_vote_id":1124,"active_committee_members":{},"active_witnesses":{}}}"#,
            parameters,
            json!(committee),
            json!(witnesses),
        );
        let config = json!({
            "GRAPHENE_SYMBOL": "BTS",
            "GRAPHENE_ADDRESS_PREFIX": "BTS",
            "GRAPHENE_MIN_ACCOUNT_NAME_LENGTH": 1,
            "GRAPHENE_MAX_ACCOUNT_NAME_LENGTH": 63,
            "GRAPHENE_MIN_ASSET_SYMBOL_LENGTH": 3,
            "GRAPHENE_MAX_ASSET_SYMBOL_LENGTH": 16,
            "GRAPHENE_MAX_SHARE_SUPPLY": "1000000000000000",
            "GRAPHENE_MAX_SIG_CHECK_DEPTH": 2,
            "GRAPHENE_MIN_TRANSACTION_SIZE_LIMIT": 1024,
            "GRAPHENE_MIN_BLOCK_INTERVAL": 1,
            "GRAPHENE_MAX_BLOCK_INTERVAL": 30,
            "GRAPHENE_DEFAULT_BLOCK_INTERVAL": 5,
            "GRAPHENE_DEFAULT_MAX_TRANSACTION_SIZE": 2048,
            "GRAPHENE_DEFAULT_MAX_BLOCK_SIZE": 2_048_000,
            "GRAPHENE_DEFAULT_MAX_TIME_UNTIL_EXPIRATION": 86_400,
            "GRAPHENE_DEFAULT_MAINTENANCE_INTERVAL": 86_400,
            "GRAPHENE_DEFAULT_MAINTENANCE_SKIP_SLOTS": 3,
            "GRAPHENE_MIN_UNDO_HISTORY": 10,
            "GRAPHENE_MAX_UNDO_HISTORY": 10_000,
            "GRAPHENE_100_PERCENT": 10_000,
            "GRAPHENE_1_PERCENT": 100,
            "GRAPHENE_BLOCKCHAIN_PRECISION": "100000",
            "GRAPHENE_BLOCKCHAIN_PRECISION_DIGITS": 5,
            "GRAPHENE_MAX_INSTANCE_ID": "281474976710655",
            "GRAPHENE_COMMITTEE_ACCOUNT": "1.2.0",
            "GRAPHENE_WITNESS_ACCOUNT": "1.2.1",
            "GRAPHENE_RELAXED_COMMITTEE_ACCOUNT": "1.2.2",
            "GRAPHENE_NULL_ACCOUNT": "1.2.3",
            "GRAPHENE_TEMP_ACCOUNT": "1.2.4",
            "GRAPHENE_PROXY_TO_SELF_ACCOUNT": "1.2.5",
        })
        .to_string();
        let chain_properties = json!({
            "id": "2.11.0",
            "chain_id": MAINNET_CHAIN_ID,
            "immutable_parameters": {
                "min_committee_member_count": 11,
                "min_witness_count": 11,
                "num_special_accounts": 0,
                "num_special_assets": 0,
            },
        })
        .to_string();
        let core_asset = json!({
            "id": "1.3.0",
            "symbol": "BTS",
            "precision": 5,
            "issuer": "1.2.3",
            "options": {
                "max_supply": "360057050210207",
                "market_fee_percent": 0,
                "max_market_fee": "1000000000000000",
                "issuer_permissions": 0,
                "flags": 0,
                "core_exchange_rate": {
                    "base": {"amount": 1, "asset_id": "1.3.0"},
                    "quote": {"amount": 1, "asset_id": "1.3.0"},
                },
                "whitelist_authorities": [],
                "blacklist_authorities": [],
                "whitelist_markets": [],
                "blacklist_markets": [],
                "description": "",
                "extensions": {},
            },
            "dynamic_asset_data_id": "2.3.0",
        })
        .to_string();
        Statics {
            global_properties,
            config,
            chain_properties,
            core_asset,
        }
    }
}

/// What a request may look at.
pub(crate) struct RpcCtx<'a> {
    pub chain: &'a Chain,
    pub head: &'a HeadUpdate,
    pub statics: &'a Statics,
    /// Chain time (ms), for error timestamps.
    pub now_ms: i64,
    /// The simulator's name, answered by the simulator-only `node_sim_name` (login API),
    /// so a client behind a proxy can tell which node it landed on.
    pub node_name: &'a str,
}

/// A transaction broadcast with a callback, confirmed by a notice in the next block.
#[derive(Debug)]
pub(crate) struct TxCallback {
    pub cb: String,
    pub after_block: u64,
    pub txid: String,
    pub trx: String,
}

/// Per-connection RPC state: the callbacks a WebSocket client registered.
pub(crate) struct Session {
    websocket: bool,
    /// Serialized callback id of `set_subscribe_callback`.
    pub subscribe_cb: Option<String>,
    /// Serialized callback id of `set_block_applied_callback`.
    pub block_cb: Option<String>,
    pub tx_callbacks: Vec<TxCallback>,
    subscribers: Arc<AtomicUsize>,
}

impl Session {
    pub fn new(websocket: bool, subscribers: Arc<AtomicUsize>) -> Self {
        Session {
            websocket,
            subscribe_cb: None,
            block_cb: None,
            tx_callbacks: Vec::new(),
            subscribers,
        }
    }

    /// Whether head changes must be pushed to this session.
    pub fn wants_blocks(&self) -> bool {
        self.subscribe_cb.is_some() || self.block_cb.is_some() || !self.tx_callbacks.is_empty()
    }

    fn set_subscribe(&mut self, cb: Option<String>) {
        match (self.subscribe_cb.is_some(), cb.is_some()) {
            (false, true) => {
                self.subscribers.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.subscribers.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.subscribe_cb = cb;
    }

    /// The notices one head change pushes to this session.
    pub fn notices(&mut self, upd: &HeadUpdate) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(cb) = &self.subscribe_cb {
            out.push(format!(
                r#"{{"method":"notice","params":[{cb},[[{}]]]}}"#,
                upd.dgp_json
            ));
            for body in &upd.heavy {
                out.push(format!(r#"{{"method":"notice","params":[{cb},{body}]}}"#));
            }
        }
        if let Some(cb) = &self.block_cb {
            out.push(format!(
                r#"{{"method":"notice","params":[{cb},["{}"]]}}"#,
                upd.block.id()
            ));
        }
        let num = upd.block.num;
        let mut trx_num = 0;
        self.tx_callbacks.retain(|t| {
            if num <= t.after_block {
                return true;
            }
            out.push(format!(
                r#"{{"method":"notice","params":[{},[{{"id":"{}","block_num":{num},"trx_num":{trx_num},"trx":{}}}]]}}"#,
                t.cb, t.txid, t.trx
            ));
            trx_num += 1;
            false
        });
        out
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.set_subscribe(None);
    }
}

/// An error answer, in the real node's shape.
#[derive(Debug)]
struct RpcError {
    code: i64,
    detail: String,
}

impl RpcError {
    fn assert(detail: impl Into<String>) -> Self {
        RpcError {
            code: 1,
            detail: detail.into(),
        }
    }
}

/// Answers one WebSocket message or HTTP body: a request object or a batch array.
pub(crate) fn handle_text(ctx: &RpcCtx, sess: &mut Session, text: &[u8]) -> String {
    let v: Value = match serde_json::from_slice(text) {
        Ok(v) => v,
        Err(e) => {
            return error_envelope(
                ctx,
                &Value::Null,
                &RpcError {
                    code: -32700,
                    detail: format!("Parse error: {e}"),
                },
            )
        }
    };
    match &v {
        Value::Array(reqs) if !reqs.is_empty() => {
            let mut out = String::from("[");
            for (i, r) in reqs.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&handle_one(ctx, sess, r));
            }
            out.push(']');
            out
        }
        _ => handle_one(ctx, sess, &v),
    }
}

fn handle_one(ctx: &RpcCtx, sess: &mut Session, req: &Value) -> String {
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    match dispatch(ctx, sess, req) {
        Ok(result) => format!(r#"{{"id":{id},"jsonrpc":"2.0","result":{result}}}"#),
        Err(e) => error_envelope(ctx, &id, &e),
    }
}

fn error_envelope(ctx: &RpcCtx, id: &Value, e: &RpcError) -> String {
    let message = if e.code == 1 {
        format!("Assert Exception: {}", e.detail)
    } else {
        e.detail.clone()
    };
    let error = json!({
            "code": e.code,
            "message": message,
            "data": {
                "code": 10,
                "name": "assert_exception",
                "message": "Assert Exception",
                "stack": [{
                    "context": {
                        "level": "error",
                        "file": "api_connection.hpp",
                        "line": 109,
                        "method": "call",
                        "hostname": "",
                        "timestamp": format_time(ctx.now_ms),
                    },
                    "format": e.detail,
                    "data": {},
                }],
            },
    });
    // Field order as the real node prints it.
    format!(r#"{{"id":{id},"jsonrpc":"2.0","error":{error}}}"#)
}

/// Routes `{"method":"call","params":[api, method, args]}`, or a bare
/// `{"method":name,"params":args}` to the database API.
fn dispatch(ctx: &RpcCtx, sess: &mut Session, req: &Value) -> Result<String, RpcError> {
    let method = req
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::assert("request has no method"))?;
    let empty = Vec::new();
    let params = req.get("params");
    if method != "call" {
        let args = params.and_then(Value::as_array).unwrap_or(&empty);
        return call(ctx, sess, Api::Database, method, args);
    }
    let params = params
        .and_then(Value::as_array)
        .filter(|p| p.len() >= 2)
        .ok_or_else(|| RpcError::assert("call needs params [api, method, args]"))?;
    let api = match &params[0] {
        Value::Number(n) => n.as_u64().and_then(api_by_id).ok_or_else(|| {
            RpcError::assert(format!("api_id < _local_apis.size(): no api with id {n}"))
        })?,
        Value::String(s) => api_by_name(s).ok_or_else(|| {
            RpcError::assert(format!("itr != _by_name.end(): no api with name '{s}'"))
        })?,
        _ => return Err(RpcError::assert("api must be a name or a number")),
    };
    let name = params[1]
        .as_str()
        .ok_or_else(|| RpcError::assert("method must be a string"))?;
    let args = params.get(2).and_then(Value::as_array).unwrap_or(&empty);
    call(ctx, sess, api, name, args)
}

fn no_method(name: &str) -> RpcError {
    RpcError::assert(format!(
        "itr != _by_name.end(): no method with name '{name}'"
    ))
}

const NULL: &str = "null";

fn call(
    ctx: &RpcCtx,
    sess: &mut Session,
    api: Api,
    name: &str,
    args: &[Value],
) -> Result<String, RpcError> {
    match api {
        Api::Login => match name {
            "login" => Ok("true".into()),
            // Not a BitShares method: only the simulator answers it (a real node says "no
            // method"). The demo uses it to show which node a wss:// client landed on.
            "node_sim_name" => Ok(Value::from(ctx.node_name).to_string()),
            "database" => Ok(API_DATABASE.to_string()),
            "network_broadcast" => Ok(API_NETWORK_BROADCAST.to_string()),
            "history" => Ok(API_HISTORY.to_string()),
            "get_api_by_name" => {
                let id = match args.first().and_then(Value::as_str) {
                    Some("database") => API_DATABASE,
                    Some("network_broadcast") => API_NETWORK_BROADCAST,
                    Some("history") => API_HISTORY,
                    Some("login") => API_LOGIN,
                    other => {
                        return Err(RpcError::assert(format!(
                            "no api with name {}",
                            other.unwrap_or("")
                        )))
                    }
                };
                Ok(id.to_string())
            }
            _ => Err(no_method(name)),
        },
        Api::Database => database(ctx, sess, name, args),
        Api::NetworkBroadcast => match name {
            "broadcast_transaction" | "broadcast_block" => {
                need(args, 1, name)?;
                Ok(NULL.into())
            }
            "broadcast_transaction_with_callback" => {
                need(args, 2, name)?;
                if sess.websocket {
                    let trx = args[1].to_string();
                    sess.tx_callbacks.push(TxCallback {
                        cb: args[0].to_string(),
                        after_block: ctx.head.block.num,
                        txid: txid(&trx),
                        trx,
                    });
                }
                Ok(NULL.into())
            }
            "broadcast_transaction_synchronous" => {
                need(args, 1, name)?;
                let trx = args[0].to_string();
                Ok(format!(
                    r#"{{"id":"{}","block_num":{},"trx_num":0,"trx":{trx}}}"#,
                    txid(&trx),
                    ctx.head.block.num + 1
                ))
            }
            _ => Err(no_method(name)),
        },
        Api::History => match name {
            "get_account_history"
            | "get_account_history_operations"
            | "get_relative_account_history"
            | "get_fill_order_history"
            | "get_market_history"
            | "get_market_history_buckets" => Ok("[]".into()),
            "get_account_history_by_operations" => {
                Ok(r#"{"total_count":0,"operation_history_objs":[]}"#.into())
            }
            _ => Err(no_method(name)),
        },
    }
}

fn need(args: &[Value], n: usize, name: &str) -> Result<(), RpcError> {
    if args.len() < n {
        return Err(RpcError::assert(format!(
            "{name} takes {n} argument(s), got {}",
            args.len()
        )));
    }
    Ok(())
}

fn database(
    ctx: &RpcCtx,
    sess: &mut Session,
    name: &str,
    args: &[Value],
) -> Result<String, RpcError> {
    let st = ctx.statics;
    match name {
        "get_dynamic_global_properties" => Ok(ctx.head.dgp_json.clone()),
        "get_global_properties" => Ok(st.global_properties.clone()),
        "get_config" => Ok(st.config.clone()),
        "get_chain_id" => Ok(format!("\"{MAINNET_CHAIN_ID}\"")),
        "get_chain_properties" => Ok(st.chain_properties.clone()),
        "get_objects" => {
            let ids = args
                .first()
                .and_then(Value::as_array)
                .ok_or_else(|| RpcError::assert("get_objects takes [[ids...]]"))?;
            let mut out = String::from("[");
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(match id.as_str() {
                    Some("2.1.0") => &ctx.head.dgp_json,
                    Some("2.0.0") => &st.global_properties,
                    Some("2.11.0") => &st.chain_properties,
                    Some("1.3.0") => &st.core_asset,
                    _ => NULL,
                });
            }
            out.push(']');
            Ok(out)
        }
        "get_block_header" | "get_block" => {
            let num = args
                .first()
                .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
                .ok_or_else(|| RpcError::assert(format!("{name} takes [block_num]")))?;
            if num == 0 || num > ctx.head.block.num {
                return Ok(NULL.into());
            }
            Ok(block_json(ctx.chain, num, name == "get_block").to_string())
        }
        "get_account_count" => Ok((1_700_000 + ctx.head.block.num / 2000).to_string()),
        "get_witness_count" => Ok("185".into()),
        "get_committee_count" => Ok("97".into()),
        "set_subscribe_callback" => {
            need(args, 1, name)?;
            callbacks_need_ws(sess)?;
            sess.set_subscribe(Some(args[0].to_string()));
            Ok(NULL.into())
        }
        "set_block_applied_callback" => {
            need(args, 1, name)?;
            callbacks_need_ws(sess)?;
            sess.block_cb = Some(args[0].to_string());
            Ok(NULL.into())
        }
        "set_pending_transaction_callback" => {
            need(args, 1, name)?;
            callbacks_need_ws(sess)?;
            Ok(NULL.into())
        }
        "set_auto_subscription" => Ok(NULL.into()),
        "cancel_all_subscriptions" => {
            sess.set_subscribe(None);
            sess.block_cb = None;
            Ok(NULL.into())
        }
        _ => Err(no_method(name)),
    }
}

fn callbacks_need_ws(sess: &Session) -> Result<(), RpcError> {
    if sess.websocket {
        Ok(())
    } else {
        Err(RpcError::assert(
            "callbacks are only available on websocket connections",
        ))
    }
}

fn block_json(chain: &Chain, num: u64, full: bool) -> Value {
    let b = chain.block_by_num(num);
    let d = b.dynamic_global_properties();
    let mut v = json!({
        "previous": block_id(num - 1),
        "timestamp": d.time,
        "witness": d.current_witness,
        "transaction_merkle_root": "0000000000000000000000000000000000000000",
        "extensions": [],
    });
    if full {
        let sig: String = (0..8)
            .map(|i| format!("{:016x}", mix64(num.wrapping_mul(7) + i)))
            .collect();
        v["witness_signature"] = json!(format!("1f{}", &sig[..128]));
        v["transactions"] = json!([]);
        v["block_id"] = json!(b.id());
        v["signing_key"] = json!(super::push::fake_pubkey(num));
        v["transaction_ids"] = json!([]);
    }
    v
}

/// A transaction id (40 hex digits) derived from the serialized transaction.
fn txid(trx: &str) -> String {
    let h = trx.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!(
        "{:016x}{:016x}{:08x}",
        mix64(h),
        mix64(h ^ 1),
        mix64(h ^ 2) as u32
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_sim::chain::ChainParams;

    fn answer(sess: &mut Session, req: &str) -> Value {
        let chain = Chain::new(ChainParams::BITSHARES_MAINNET);
        let head = HeadUpdate::new(chain.head_at(1_760_000_000_000), None);
        let statics = Statics::new(ChainParams::BITSHARES_MAINNET);
        let ctx = RpcCtx {
            chain: &chain,
            head: &head,
            statics: &statics,
            now_ms: 1_760_000_000_000,
            node_name: "node-7",
        };
        serde_json::from_str(&handle_text(&ctx, sess, req.as_bytes())).expect("answer is JSON")
    }

    #[test]
    fn shapes() {
        let subs = Arc::new(AtomicUsize::new(0));
        let mut s = Session::new(true, subs.clone());
        let r = answer(
            &mut s,
            r#"{"id":1,"method":"call","params":[1,"login",["",""]]}"#,
        );
        assert_eq!(r, json!({"id":1,"jsonrpc":"2.0","result":true}));
        let r = answer(
            &mut s,
            r#"{"id":1,"method":"call","params":["login","node_sim_name",[]]}"#,
        );
        assert_eq!(r["result"], "node-7");
        let r = answer(
            &mut s,
            r#"{"id":2,"method":"call","params":[1,"database",[]]}"#,
        );
        assert_eq!(r["result"], 2);
        let r = answer(
            &mut s,
            r#"{"id":"x","method":"call","params":[2,"get_chain_id",[]]}"#,
        );
        assert_eq!(r["id"], "x");
        assert_eq!(r["result"], MAINNET_CHAIN_ID);
        let r = answer(
            &mut s,
            r#"{"id":3,"method":"call","params":["database","get_objects",[["2.1.0","2.0.0","1.2.999"]]]}"#,
        );
        assert_eq!(r["result"][0]["id"], "2.1.0");
        assert_eq!(r["result"][1]["parameters"]["maintenance_skip_slots"], 3);
        assert!(r["result"][2].is_null());
        let r = answer(&mut s, r#"{"id":4,"method":"get_config","params":[]}"#);
        assert_eq!(r["result"]["GRAPHENE_SYMBOL"], "BTS");
        let r = answer(
            &mut s,
            r#"{"id":5,"method":"call","params":["database","nope",[]]}"#,
        );
        assert_eq!(r["error"]["code"], 1);
        assert!(r["error"]["message"].as_str().unwrap().contains("nope"));
        let r = answer(&mut s, r#"{"id":6,"method":"call","params":[9,"x",[]]}"#);
        assert_eq!(r["error"]["code"], 1);
        let r = answer(&mut s, "{not json");
        assert_eq!(r["error"]["code"], -32700);
        let r = answer(
            &mut s,
            r#"[{"id":7,"method":"call","params":["database","get_chain_id",[]]},{"id":8,"method":"call","params":["history","get_account_history",["1.2.1","1.11.0",10,"1.11.0"]]}]"#,
        );
        assert_eq!(r[0]["id"], 7);
        assert_eq!(r[1]["result"], json!([]));
        let r = answer(
            &mut s,
            r#"{"id":9,"method":"call","params":["database","set_subscribe_callback",[5,true]]}"#,
        );
        assert!(r["result"].is_null());
        assert_eq!(subs.load(Ordering::Relaxed), 1);
        drop(s);
        assert_eq!(subs.load(Ordering::Relaxed), 0);
        // Over HTTP, callbacks are refused.
        let mut h = Session::new(false, subs.clone());
        let r = answer(
            &mut h,
            r#"{"id":1,"method":"call","params":["database","set_subscribe_callback",[5,true]]}"#,
        );
        assert_eq!(r["error"]["code"], 1);
        let r = answer(
            &mut h,
            r#"{"id":1,"method":"call","params":["network_broadcast","broadcast_transaction",[{"ref_block_num":1}]]}"#,
        );
        assert!(r["result"].is_null());
        let r = answer(
            &mut h,
            r#"{"id":1,"method":"call","params":["database","get_block",[93000000]]}"#,
        );
        assert_eq!(r["result"]["timestamp"], "2025-01-01T00:00:00");
    }

    #[test]
    fn notices_and_tx_callbacks() {
        let chain = Chain::new(ChainParams::BITSHARES_MAINNET);
        let subs = Arc::new(AtomicUsize::new(0));
        let mut s = Session::new(true, subs);
        s.set_subscribe(Some("7".into()));
        s.block_cb = Some("8".into());
        s.tx_callbacks.push(TxCallback {
            cb: "9".into(),
            after_block: 10,
            txid: "ab".into(),
            trx: "{}".into(),
        });
        let upd = HeadUpdate::new(chain.block_by_num(10), None);
        assert_eq!(s.notices(&upd).len(), 2);
        let upd = HeadUpdate::new(chain.block_by_num(11), None);
        let n = s.notices(&upd);
        assert_eq!(n.len(), 3);
        let v: Value = serde_json::from_str(&n[0]).unwrap();
        assert_eq!(v["method"], "notice");
        assert_eq!(v["params"][0], 7);
        assert_eq!(v["params"][1][0][0]["id"], "2.1.0");
        let v: Value = serde_json::from_str(&n[2]).unwrap();
        assert_eq!(v["params"][1][0]["block_num"], 11);
        assert!(s.tx_callbacks.is_empty());
    }
}
