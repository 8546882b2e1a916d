//! Heavy server push: extra subscription objects per block.
//!
//! The objects are operation history objects (`1.11.N`) holding transfers with
//! a memo, the bulk of what a busy chain pushes to subscribed wallets; the memo's
//! hex message pads each object to the requested size.

use std::fmt::Write as _;

use super::chain::{format_time, mix64, Block};
use super::HeavyPush;

const BASE58: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// A public key lookalike: "BTS" and 50 base58 characters.
pub(crate) fn fake_pubkey(seed: u64) -> String {
    let mut s = String::with_capacity(53);
    s.push_str("BTS");
    let mut h = mix64(seed ^ 0x6b65_7973);
    for i in 0..50 {
        if i % 10 == 0 {
            h = mix64(h);
        }
        s.push(BASE58[(h % 58) as usize] as char);
        h /= 58;
    }
    s
}

/// The notice bodies (`[[obj, ...]]`) heavy push sends for one block.
pub(crate) fn heavy_bodies(block: &Block, h: &HeavyPush) -> Vec<String> {
    let per = h.objects_per_notice.max(1) as usize;
    let total = h.objects_per_block as usize;
    let time = format_time(block.time_ms);
    let mut out = Vec::with_capacity(total.div_ceil(per));
    let mut body = String::new();
    for i in 0..total {
        if i % per == 0 {
            body = String::with_capacity(per * (h.object_bytes as usize + 16) + 4);
            body.push_str("[[");
        } else {
            body.push(',');
        }
        let seq = block.num * u64::from(h.objects_per_block) + i as u64;
        write_object(&mut body, block, &time, seq, i, h.object_bytes as usize);
        if i % per == per - 1 || i == total - 1 {
            body.push_str("]]");
            out.push(std::mem::take(&mut body));
        }
    }
    out
}

fn write_object(out: &mut String, block: &Block, time: &str, seq: u64, i: usize, bytes: usize) {
    let r = mix64(seq);
    let head = format!(
        r#"{{"id":"1.11.{seq}","op":[0,{{"fee":{{"amount":{},"asset_id":"1.3.0"}},"from":"1.2.{}","to":"1.2.{}","amount":{{"amount":{},"asset_id":"1.3.{}"}},"memo":{{"from":"{}","to":"{}","nonce":"{}","message":""#,
        8000 + r % 2000,
        100 + r % 1_800_000,
        100 + (r >> 20) % 1_800_000,
        1 + (r >> 7) % 1_000_000_000,
        (r >> 40) % 6000,
        fake_pubkey(r),
        fake_pubkey(r ^ 1),
        mix64(r ^ 2) >> 1,
    );
    let tail = format!(
        r#""}},"extensions":[]}}],"result":[0,{{}}],"block_num":{},"trx_in_block":{i},"op_in_trx":0,"virtual_op":{},"is_virtual":false,"block_time":"{time}"}}"#,
        block.num,
        r % 60_000,
    );
    out.push_str(&head);
    // Memo message: hex, an even number of digits, filling up to `bytes`.
    let pad = bytes.saturating_sub(head.len() + tail.len()) & !1;
    let mut h = r;
    for k in 0..pad.div_ceil(16) {
        h = mix64(h);
        let n = (pad - k * 16).min(16);
        let _ = write!(out, "{:016x}", h);
        out.truncate(out.len() - (16 - n));
    }
    out.push_str(&tail);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_sim::chain::{Chain, ChainParams};

    #[test]
    fn bodies_have_the_requested_shape() {
        let b = Chain::new(ChainParams::BITSHARES_MAINNET).head_at(1_760_000_000_000);
        let h = HeavyPush {
            objects_per_block: 5,
            object_bytes: 1000,
            objects_per_notice: 2,
        };
        let bodies = heavy_bodies(&b, &h);
        assert_eq!(bodies.len(), 3);
        let mut objs = 0;
        for body in &bodies {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            for o in v[0].as_array().unwrap() {
                objs += 1;
                let len = o.to_string().len();
                assert!((990..=1000).contains(&len), "{len}");
                assert!(o["id"].as_str().unwrap().starts_with("1.11."));
            }
        }
        assert_eq!(objs, 5);
        assert_eq!(fake_pubkey(3).len(), 53);
    }
}
