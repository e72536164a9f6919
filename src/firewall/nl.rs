//! Netlink plumbing for nf_tables: expressions, sets, counters, element batches, and a socket
//! that sends a whole batch in one `sendmsg` and checks the ACK of every sequence number.
//!
//! The `nftnl` crate covers tables, chains, rules and the batch buffer. What it lacks (concat
//! registers, `log`, `limit`, `reject`, named counters, set flags and element timeouts) is built
//! here on `nftnl_sys`, the libnftnl bindings underneath it.

use std::ffi::{CStr, CString, c_void};
use std::io;
use std::os::fd::AsRawFd;
use std::os::raw::c_char;
use std::ptr::NonNull;

use nftnl::expr::Expression;
use nftnl::{FinalizedBatch, MsgType, NlMsg, Rule};
use nftnl_sys as sys;

// Constants the `libc` crate does not carry for every target.
pub const NFT_SET_CONCAT: u32 = 0x80;
pub const NFT_OBJECT_COUNTER: u32 = 1;
pub const NETLINK_CAP_ACK: libc::c_int = 10;
pub const NETLINK_EXT_ACK: libc::c_int = 11;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLM_F_ACK_TLVS: u16 = 0x200;

/// Data registers used for concatenated lookups: each field starts at a 32-bit register.
pub const REG32_00: u32 = libc::NFT_REG32_00 as u32;
pub const REG_1: u32 = libc::NFT_REG_1 as u32;
pub const REG_2: u32 = libc::NFT_REG_2 as u32;
pub const REG_VERDICT: u32 = libc::NFT_REG_VERDICT as u32;

/// One attribute value of an expression, with the width libnftnl expects.
enum Val {
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    Str(CString),
    Data(Vec<u8>),
}

/// A generic nftnl expression: a name plus attributes. Every expression egressd uses is one of
/// the constructors below, so the rule builders read like the `nft` syntax they produce.
pub struct Expr {
    name: &'static CStr,
    attrs: Vec<(u32, Val)>,
}

impl Expr {
    fn new(name: &'static CStr) -> Self {
        Expr {
            name,
            attrs: Vec::new(),
        }
    }

    fn with(mut self, attr: u32, val: Val) -> Self {
        self.attrs.push((attr, val));
        self
    }

    /// `meta KEY` loaded into `dreg`.
    pub fn meta(key: u32, dreg: u32) -> Self {
        Expr::new(c"meta")
            .with(sys::NFTNL_EXPR_META_KEY, Val::U32(key))
            .with(sys::NFTNL_EXPR_META_DREG, Val::U32(dreg))
    }

    /// `sreg == data`.
    pub fn cmp_eq(sreg: u32, data: &[u8]) -> Self {
        Expr::new(c"cmp")
            .with(sys::NFTNL_EXPR_CMP_SREG, Val::U32(sreg))
            .with(sys::NFTNL_EXPR_CMP_OP, Val::U32(libc::NFT_CMP_EQ as u32))
            .with(sys::NFTNL_EXPR_CMP_DATA, Val::Data(data.to_vec()))
    }

    /// Load `len` bytes at `offset` of header `base` into `dreg`.
    pub fn payload(base: u32, offset: u32, len: u32, dreg: u32) -> Self {
        Expr::new(c"payload")
            .with(sys::NFTNL_EXPR_PAYLOAD_DREG, Val::U32(dreg))
            .with(sys::NFTNL_EXPR_PAYLOAD_BASE, Val::U32(base))
            .with(sys::NFTNL_EXPR_PAYLOAD_OFFSET, Val::U32(offset))
            .with(sys::NFTNL_EXPR_PAYLOAD_LEN, Val::U32(len))
    }

    /// Look the key starting at `sreg` up in a named set.
    pub fn lookup(set: &CStr, set_id: u32, sreg: u32) -> Self {
        Expr::new(c"lookup")
            .with(sys::NFTNL_EXPR_LOOKUP_SREG, Val::U32(sreg))
            .with(sys::NFTNL_EXPR_LOOKUP_SET, Val::Str(set.to_owned()))
            .with(sys::NFTNL_EXPR_LOOKUP_SET_ID, Val::U32(set_id))
    }

    /// `ct KEY` loaded into `dreg`.
    pub fn ct_load(key: u32, dreg: u32) -> Self {
        Expr::new(c"ct")
            .with(sys::NFTNL_EXPR_CT_KEY, Val::U32(key))
            .with(sys::NFTNL_EXPR_CT_DREG, Val::U32(dreg))
    }

    /// `ct KEY set sreg`.
    pub fn ct_store(key: u32, sreg: u32) -> Self {
        Expr::new(c"ct")
            .with(sys::NFTNL_EXPR_CT_KEY, Val::U32(key))
            .with(sys::NFTNL_EXPR_CT_SREG, Val::U32(sreg))
    }

    /// `dreg = (sreg & mask) ^ xor` on 4 bytes.
    pub fn bitwise(reg: u32, mask: u32, xor: u32) -> Self {
        Expr::new(c"bitwise")
            .with(sys::NFTNL_EXPR_BITWISE_SREG, Val::U32(reg))
            .with(sys::NFTNL_EXPR_BITWISE_DREG, Val::U32(reg))
            .with(sys::NFTNL_EXPR_BITWISE_LEN, Val::U32(4))
            .with(
                sys::NFTNL_EXPR_BITWISE_MASK,
                Val::Data(mask.to_ne_bytes().to_vec()),
            )
            .with(
                sys::NFTNL_EXPR_BITWISE_XOR,
                Val::Data(xor.to_ne_bytes().to_vec()),
            )
    }

    /// Loads constant `data` into `dreg`.
    pub fn immediate_data(dreg: u32, data: &[u8]) -> Self {
        Expr::new(c"immediate")
            .with(sys::NFTNL_EXPR_IMM_DREG, Val::U32(dreg))
            .with(sys::NFTNL_EXPR_IMM_DATA, Val::Data(data.to_vec()))
    }

    /// `dnat ip|ip6 to ADDR:PORT`, with the address in `reg_addr` and the port (network
    /// order) in `reg_proto`.
    pub fn dnat(nfproto: i32, reg_addr: u32, reg_proto: u32) -> Self {
        Expr::new(c"nat")
            .with(
                sys::NFTNL_EXPR_NAT_TYPE,
                Val::U32(libc::NFT_NAT_DNAT as u32),
            )
            .with(sys::NFTNL_EXPR_NAT_FAMILY, Val::U32(nfproto as u32))
            .with(sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, Val::U32(reg_addr))
            .with(sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, Val::U32(reg_proto))
    }

    /// `accept` (or any other netfilter verdict).
    pub fn verdict(verdict: i32) -> Self {
        Expr::new(c"immediate")
            .with(sys::NFTNL_EXPR_IMM_DREG, Val::U32(REG_VERDICT))
            .with(sys::NFTNL_EXPR_IMM_VERDICT, Val::U32(verdict as u32))
    }

    /// `counter name "NAME"`: count into a named counter object.
    pub fn counter_ref(name: &CStr) -> Self {
        Expr::new(c"objref")
            .with(
                sys::NFTNL_EXPR_OBJREF_IMM_TYPE,
                Val::U32(NFT_OBJECT_COUNTER),
            )
            .with(sys::NFTNL_EXPR_OBJREF_IMM_NAME, Val::Str(name.to_owned()))
    }

    /// `limit rate RATE/second burst BURST packets`.
    pub fn limit_per_second(rate: u64, burst: u32) -> Self {
        Expr::new(c"limit")
            .with(sys::NFTNL_EXPR_LIMIT_RATE, Val::U64(rate))
            .with(sys::NFTNL_EXPR_LIMIT_UNIT, Val::U64(1))
            .with(sys::NFTNL_EXPR_LIMIT_BURST, Val::U32(burst))
            .with(sys::NFTNL_EXPR_LIMIT_TYPE, Val::U32(0)) // NFT_LIMIT_PKTS
            .with(sys::NFTNL_EXPR_LIMIT_FLAGS, Val::U32(0))
    }

    /// `log prefix "PREFIX" group GROUP` (NFLOG).
    pub fn log_group(group: u16, prefix: &CStr) -> Self {
        Expr::new(c"log")
            .with(sys::NFTNL_EXPR_LOG_GROUP, Val::U16(group))
            .with(sys::NFTNL_EXPR_LOG_PREFIX, Val::Str(prefix.to_owned()))
    }

    /// `reject with tcp reset`.
    pub fn reject_tcp_reset() -> Self {
        Expr::new(c"reject")
            .with(
                sys::NFTNL_EXPR_REJECT_TYPE,
                Val::U32(libc::NFT_REJECT_TCP_RST as u32),
            )
            .with(sys::NFTNL_EXPR_REJECT_CODE, Val::U8(0))
    }

    /// `reject with icmpx admin-prohibited`.
    pub fn reject_icmpx_admin() -> Self {
        Expr::new(c"reject")
            .with(
                sys::NFTNL_EXPR_REJECT_TYPE,
                Val::U32(libc::NFT_REJECT_ICMPX_UNREACH as u32),
            )
            .with(
                sys::NFTNL_EXPR_REJECT_CODE,
                Val::U8(libc::NFT_REJECT_ICMPX_ADMIN_PROHIBITED as u8),
            )
    }
}

impl Expression for Expr {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: libnftnl copies every value it is given; the pointers live for the call.
        unsafe {
            let expr = alloc_or_abort(sys::nftnl_expr_alloc(self.name.as_ptr()));
            let e = expr.as_ptr();
            for (attr, val) in &self.attrs {
                let attr = *attr as u16;
                match val {
                    Val::U8(v) => sys::nftnl_expr_set_u8(e, attr, *v),
                    Val::U16(v) => sys::nftnl_expr_set_u16(e, attr, *v),
                    Val::U32(v) => sys::nftnl_expr_set_u32(e, attr, *v),
                    Val::U64(v) => sys::nftnl_expr_set_u64(e, attr, *v),
                    Val::Str(v) => {
                        sys::nftnl_expr_set_str(e, attr, v.as_ptr());
                    }
                    Val::Data(v) => {
                        sys::nftnl_expr_set(e, attr, v.as_ptr().cast::<c_void>(), v.len() as u32);
                    }
                }
            }
            expr
        }
    }
}

/// libnftnl allocations fail only when memory is exhausted; the `nftnl` crate aborts then too.
fn alloc_or_abort<T>(ptr: *mut T) -> NonNull<T> {
    match NonNull::new(ptr) {
        Some(p) => p,
        None => std::process::abort(),
    }
}

/// How a set stores its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetSpec {
    /// nft datatype id of the key (for `nft list` to print it), see [`concat_type`].
    pub key_type: u32,
    /// Key length in bytes, register-padded.
    pub key_len: u32,
    /// `NFT_SET_*` flags.
    pub flags: u32,
    /// Field lengths for interval concatenations (`NFTA_SET_DESC_CONCAT`), unpadded.
    pub concat_fields: &'static [u8],
}

/// nft's datatype id of a concatenation: each type shifted in by 6 bits.
pub const fn concat_type(types: &[u32]) -> u32 {
    let mut out = 0;
    let mut i = 0;
    while i < types.len() {
        out = (out << 6) | types[i];
        i += 1;
    }
    out
}

/// One set element: key, optional inclusive range end, optional timeout in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elem {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub timeout_ms: Option<u64>,
}

/// A set (the definition, plus elements to send with it or on their own).
pub struct Set {
    ptr: NonNull<sys::nftnl_set>,
    family: u16,
}

impl Set {
    pub fn new(table: &CStr, family: u16, name: &CStr, id: u32, spec: &SetSpec) -> Self {
        // SAFETY: fresh allocation; libnftnl copies strings and data.
        unsafe {
            let ptr = alloc_or_abort(sys::nftnl_set_alloc());
            let s = ptr.as_ptr();
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, u32::from(family));
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, name.as_ptr());
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_ID as u16, id);
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FLAGS as u16, spec.flags);
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_TYPE as u16, spec.key_type);
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_LEN as u16, spec.key_len);
            if !spec.concat_fields.is_empty() {
                sys::nftnl_set_set_data(
                    s,
                    sys::NFTNL_SET_DESC_CONCAT as u16,
                    spec.concat_fields.as_ptr().cast::<c_void>(),
                    spec.concat_fields.len() as u32,
                );
            }
            Set { ptr, family }
        }
    }

    pub fn add_elem(&mut self, elem: &Elem) {
        // SAFETY: the element is handed over to the set, which frees it.
        unsafe {
            let e = alloc_or_abort(sys::nftnl_set_elem_alloc()).as_ptr();
            sys::nftnl_set_elem_set(
                e,
                sys::NFTNL_SET_ELEM_KEY as u16,
                elem.key.as_ptr().cast::<c_void>(),
                elem.key.len() as u32,
            );
            if let Some(end) = &elem.key_end {
                sys::nftnl_set_elem_set(
                    e,
                    sys::NFTNL_SET_ELEM_KEY_END as u16,
                    end.as_ptr().cast::<c_void>(),
                    end.len() as u32,
                );
            }
            if let Some(ms) = elem.timeout_ms {
                sys::nftnl_set_elem_set_u64(e, sys::NFTNL_SET_ELEM_TIMEOUT as u16, ms);
            }
            sys::nftnl_set_elem_add(self.ptr.as_ptr(), e);
        }
    }

    /// Writes NEWSETELEM (or DELSETELEM) messages for every element into `batch`. Adds are sent
    /// without `NLM_F_EXCL`: adding an element that exists refreshes its timeout instead of
    /// failing with EEXIST (kernel 6.10+ updates the timeout; older kernels keep the old one).
    pub fn write_elems(&self, batch: &mut nftnl::Batch, msg_type: MsgType) -> usize {
        // SAFETY: the iterator borrows the set, which outlives it. libnftnl's build function
        // returns 1 while elements remain (the message is full) and 0 once all are written;
        // the iterator's `cur` alone does not say when the list is done.
        unsafe {
            let iter = alloc_or_abort(sys::nftnl_set_elems_iter_create(self.ptr.as_ptr()));
            let mut msgs = 0;
            let more = std::cell::Cell::new(1);
            while more.get() > 0 && !sys::nftnl_set_elems_iter_cur(iter.as_ptr()).is_null() {
                let msg = ElemsMsg {
                    set: self,
                    iter: iter.as_ptr(),
                    more: &more,
                };
                batch.add(&msg, msg_type);
                msgs += 1;
            }
            sys::nftnl_set_elems_iter_destroy(iter.as_ptr());
            msgs
        }
    }
}

impl Drop for Set {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`, freed once.
        unsafe { sys::nftnl_set_free(self.ptr.as_ptr()) }
    }
}

// SAFETY: writes one NEWSET/DELSET message, which fits in nft_nlmsg_maxsize.
unsafe impl NlMsg for Set {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let (ty, flags) = match msg_type {
            MsgType::Add => (libc::NFT_MSG_NEWSET, libc::NLM_F_CREATE | libc::NLM_F_ACK),
            MsgType::Del => (libc::NFT_MSG_DELSET, libc::NLM_F_ACK),
        };
        unsafe {
            let h = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                ty as u16,
                self.family,
                flags as u16,
                seq,
            );
            sys::nftnl_set_nlmsg_build_payload(h, self.ptr.as_ptr());
        }
    }
}

struct ElemsMsg<'a> {
    set: &'a Set,
    iter: *mut sys::nftnl_set_elems_iter,
    more: &'a std::cell::Cell<i32>,
}

// SAFETY: libnftnl stops filling the message at BUFSIZ bytes, far below nft_nlmsg_maxsize.
unsafe impl NlMsg for ElemsMsg<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let (ty, flags) = match msg_type {
            MsgType::Add => (
                libc::NFT_MSG_NEWSETELEM,
                libc::NLM_F_CREATE | libc::NLM_F_ACK,
            ),
            MsgType::Del => (libc::NFT_MSG_DELSETELEM, libc::NLM_F_ACK),
        };
        unsafe {
            let h = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                ty as u16,
                self.set.family,
                flags as u16,
                seq,
            );
            self.more
                .set(sys::nftnl_set_elems_nlmsg_build_payload_iter(h, self.iter));
        }
    }
}

/// A named counter object (`counter NAME { }`).
pub struct Counter {
    ptr: NonNull<sys::nftnl_obj>,
    family: u16,
}

impl Counter {
    pub fn new(table: &CStr, family: u16, name: &CStr) -> Self {
        // SAFETY: fresh allocation; libnftnl copies the strings.
        unsafe {
            let ptr = alloc_or_abort(sys::nftnl_obj_alloc());
            let o = ptr.as_ptr();
            sys::nftnl_obj_set_str(o, sys::NFTNL_OBJ_TABLE as u16, table.as_ptr());
            sys::nftnl_obj_set_str(o, sys::NFTNL_OBJ_NAME as u16, name.as_ptr());
            sys::nftnl_obj_set_u32(o, sys::NFTNL_OBJ_TYPE as u16, NFT_OBJECT_COUNTER);
            sys::nftnl_obj_set_u32(o, sys::NFTNL_OBJ_FAMILY as u16, u32::from(family));
            Counter { ptr, family }
        }
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`, freed once.
        unsafe { sys::nftnl_obj_free(self.ptr.as_ptr()) }
    }
}

// SAFETY: one small NEWOBJ message.
unsafe impl NlMsg for Counter {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _msg_type: MsgType) {
        unsafe {
            let h = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                libc::NFT_MSG_NEWOBJ as u16,
                self.family,
                (libc::NLM_F_CREATE | libc::NLM_F_ACK) as u16,
                seq,
            );
            sys::nftnl_obj_nlmsg_build_payload(h, self.ptr.as_ptr());
        }
    }
}

/// An error the kernel returned for one message of a batch.
#[derive(Debug)]
pub struct NlError {
    /// What the failing message did (`add set dom4`), from the batch's description list.
    pub what: String,
    pub source: io::Error,
    /// The kernel's extended-ACK text, when it sent one.
    pub kernel_msg: Option<String>,
}

/// A netfilter netlink socket, opened in (and bound to) one network namespace.
pub struct NfSocket {
    sock: mnl::Socket,
}

// SAFETY: an mnl_socket is a file descriptor plus its bound address; nothing in it is tied to
// the thread that opened it (the namespace is tied to the socket, not the thread).
unsafe impl Send for NfSocket {}

impl AsRawFd for NfSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }
}

impl NfSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter)?;
        let fd = sock.as_raw_fd();
        // Small ACKs (no echo of the request) and error strings from the kernel.
        setsockopt_int(fd, libc::SOL_NETLINK, NETLINK_CAP_ACK, 1)?;
        setsockopt_int(fd, libc::SOL_NETLINK, NETLINK_EXT_ACK, 1)?;
        // Room for the answers to a large batch and for large dumps.
        set_buffer(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, 8 << 20)?;
        Ok(NfSocket { sock })
    }

    /// Sends the whole batch in one `sendmsg` (the kernel treats one message as one
    /// transaction; splitting a batch makes it fail) and checks the ACK of every sequence
    /// number. `what[i]` describes the message with sequence number `first_seq + i`.
    pub fn send_batch(&self, batch: &FinalizedBatch, what: &[String]) -> Result<(), NlError> {
        self.drain();
        let pages: Vec<&[u8]> = batch.iter().collect();
        let total: usize = pages.iter().map(|p| p.len()).sum();
        let fd = self.sock.as_raw_fd();
        let wrap = |what: &str, source: io::Error| NlError {
            what: what.to_string(),
            source,
            kernel_msg: None,
        };
        let want = i32::try_from(total + 64 * 1024).unwrap_or(i32::MAX);
        set_buffer(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, want)
            .map_err(|e| wrap("set socket send buffer", e))?;
        let mut iov: Vec<libc::iovec> = pages
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut c_void,
                iov_len: p.len(),
            })
            .collect();
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_name = (&mut addr as *mut libc::sockaddr_nl).cast::<c_void>();
        hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as u32;
        hdr.msg_iov = iov.as_mut_ptr();
        hdr.msg_iovlen = iov.len();
        // SAFETY: every pointer in `hdr` refers to memory that lives across the call.
        let sent = unsafe { libc::sendmsg(fd, &hdr, 0) };
        if sent < 0 {
            return Err(wrap("send batch", io::Error::last_os_error()));
        }
        if sent as usize != total {
            return Err(wrap(
                "send batch",
                io::Error::other(format!("short send: {sent} of {total} bytes")),
            ));
        }

        let seqs = batch.sequence_numbers();
        let mut pending: std::collections::BTreeSet<u32> = seqs.clone().collect();
        // Messages with seq 0 (batch begin/end on old kernels) are not acked.
        pending.remove(&0);
        let describe = |seq: u32| -> String {
            seq.checked_sub(seqs.start)
                .and_then(|i| what.get(i as usize))
                .cloned()
                .unwrap_or_else(|| format!("message {seq}"))
        };
        let mut buf = vec![0u8; 256 * 1024];
        let mut first_error: Option<NlError> = None;
        while !pending.is_empty() {
            let n = match self.sock.recv_raw(&mut buf) {
                Ok(n) => n,
                // The transaction failed and the kernel sent all it will send.
                Err(_) if first_error.is_some() => break,
                Err(e) => return Err(wrap("receive ACKs", e)),
            };
            for msg in NlIter::new(&buf[..n]) {
                if msg.ty != libc::NLMSG_ERROR as u16 {
                    continue;
                }
                pending.remove(&msg.seq);
                let Some(errno) = msg.payload.get(..4) else {
                    continue;
                };
                let errno = i32::from_ne_bytes([errno[0], errno[1], errno[2], errno[3]]);
                if errno != 0 && first_error.is_none() {
                    first_error = Some(NlError {
                        what: describe(msg.seq),
                        source: io::Error::from_raw_os_error(-errno),
                        kernel_msg: ext_ack_msg(&msg),
                    });
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Discards answers left over from an earlier, failed exchange.
    fn drain(&self) {
        let mut buf = [0u8; 8192];
        // SAFETY: receives into a local buffer of the given length.
        while unsafe {
            libc::recv(
                self.sock.as_raw_fd(),
                buf.as_mut_ptr().cast::<c_void>(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        } > 0
        {}
    }

    /// Sends one dump request and returns every message of the answer (until NLMSG_DONE).
    pub fn dump(&self, request: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        self.sock.send(request)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = self.sock.recv_raw(&mut buf)?;
            for msg in NlIter::new(&buf[..n]) {
                if msg.ty == libc::NLMSG_DONE as u16 {
                    return Ok(out);
                }
                if msg.ty == libc::NLMSG_ERROR as u16 {
                    let errno = msg
                        .payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(-libc::EPROTO);
                    if errno == 0 {
                        return Ok(out);
                    }
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                out.push(msg.raw.to_vec());
            }
        }
    }
}

fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    opt: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a local int of the declared size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&val as *const libc::c_int).cast::<c_void>(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets a socket buffer size, beyond `rmem_max`/`wmem_max` when we have CAP_NET_ADMIN.
fn set_buffer(
    fd: libc::c_int,
    force_opt: libc::c_int,
    opt: libc::c_int,
    size: libc::c_int,
) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, force_opt, size)
        .or_else(|_| setsockopt_int(fd, libc::SOL_SOCKET, opt, size))
}

/// One netlink message in a receive buffer.
pub struct NlMsgRef<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// The whole message, header included.
    pub raw: &'a [u8],
    /// What follows the header.
    pub payload: &'a [u8],
}

/// Iterates over the netlink messages in a buffer; stops at the first malformed one.
pub struct NlIter<'a> {
    buf: &'a [u8],
}

impl<'a> NlIter<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        NlIter { buf }
    }
}

impl<'a> Iterator for NlIter<'a> {
    type Item = NlMsgRef<'a>;

    fn next(&mut self) -> Option<NlMsgRef<'a>> {
        const HDR: usize = 16;
        if self.buf.len() < HDR {
            return None;
        }
        let b = self.buf;
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < HDR || len > b.len() {
            return None;
        }
        let msg = NlMsgRef {
            ty: u16::from_ne_bytes([b[4], b[5]]),
            flags: u16::from_ne_bytes([b[6], b[7]]),
            seq: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            raw: &b[..len],
            payload: &b[HDR..len],
        };
        let aligned = (len + 3) & !3;
        self.buf = &b[aligned.min(b.len())..];
        Some(msg)
    }
}

/// The `NLMSGERR_ATTR_MSG` string of an extended ACK, if any. With `NETLINK_CAP_ACK` the
/// error is followed only by the original header (16 bytes), then the TLVs.
fn ext_ack_msg(msg: &NlMsgRef<'_>) -> Option<String> {
    if msg.flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let mut tlvs = msg.payload.get(4 + 16..)?;
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let ty = u16::from_ne_bytes([tlvs[2], tlvs[3]]);
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if ty == NLMSGERR_ATTR_MSG {
            let s = &tlvs[4..len];
            let s = s.split(|c| *c == 0).next().unwrap_or(s);
            return Some(String::from_utf8_lossy(s).into_owned());
        }
        tlvs = &tlvs[((len + 3) & !3).min(tlvs.len())..];
    }
    None
}

/// Builds a dump request (`NLM_F_DUMP`) for one nf_tables object type in one family,
/// optionally restricted to one table (libnftnl fills the table attribute).
pub fn dump_request(msg_type: i32, family: u16, seq: u32) -> Vec<u8> {
    let mut buf = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
    // SAFETY: the buffer is large enough for any nf_tables message.
    unsafe {
        let h = sys::nftnl_nlmsg_build_hdr(
            buf.as_mut_ptr().cast::<c_char>(),
            msg_type as u16,
            family,
            libc::NLM_F_DUMP as u16,
            seq,
        );
        let len = (*h).nlmsg_len as usize;
        buf.truncate(len);
    }
    buf
}

/// Builds a GETSETELEM request for one element (`key`, and `key_end` for interval sets):
/// the kernel answers with the element, or ENOENT.
pub fn get_set_elem_request(
    table: &CStr,
    family: u16,
    set: &CStr,
    elem: &Elem,
    seq: u32,
) -> Vec<u8> {
    let mut buf = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
    // SAFETY: the buffer is large enough; the temporary set (and its element) is freed before
    // returning.
    unsafe {
        let s = alloc_or_abort(sys::nftnl_set_alloc()).as_ptr();
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, set.as_ptr());
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, u32::from(family));
        let e = alloc_or_abort(sys::nftnl_set_elem_alloc()).as_ptr();
        sys::nftnl_set_elem_set(
            e,
            sys::NFTNL_SET_ELEM_KEY as u16,
            elem.key.as_ptr().cast::<c_void>(),
            elem.key.len() as u32,
        );
        if let Some(end) = &elem.key_end {
            sys::nftnl_set_elem_set(
                e,
                sys::NFTNL_SET_ELEM_KEY_END as u16,
                end.as_ptr().cast::<c_void>(),
                end.len() as u32,
            );
        }
        sys::nftnl_set_elem_add(s, e);
        let h = sys::nftnl_nlmsg_build_hdr(
            buf.as_mut_ptr().cast::<c_char>(),
            libc::NFT_MSG_GETSETELEM as u16,
            family,
            libc::NLM_F_ACK as u16,
            seq,
        );
        sys::nftnl_set_elems_nlmsg_build_payload(h, s);
        let len = (*h).nlmsg_len as usize;
        sys::nftnl_set_free(s);
        buf.truncate(len);
    }
    buf
}

/// Builds a GETSETELEM dump request for one set.
pub fn dump_set_elems_request(table: &CStr, family: u16, set: &CStr, seq: u32) -> Vec<u8> {
    let mut buf = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
    // SAFETY: the buffer is large enough; the temporary set is freed before returning.
    unsafe {
        let s = alloc_or_abort(sys::nftnl_set_alloc()).as_ptr();
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, set.as_ptr());
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, u32::from(family));
        let h = sys::nftnl_nlmsg_build_hdr(
            buf.as_mut_ptr().cast::<c_char>(),
            libc::NFT_MSG_GETSETELEM as u16,
            family,
            libc::NLM_F_DUMP as u16,
            seq,
        );
        sys::nftnl_set_elems_nlmsg_build_payload(h, s);
        let len = (*h).nlmsg_len as usize;
        sys::nftnl_set_free(s);
        buf.truncate(len);
    }
    buf
}

/// Parsed summary of the objects of one table, read back from the kernel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TableDump {
    pub chains: Vec<String>,
    /// (set name, flags, key length)
    pub sets: Vec<(String, u32, u32)>,
    /// (chain name, number of rules)
    pub rules: Vec<(String, usize)>,
    /// (counter name, packets, bytes)
    pub counters: Vec<(String, u64, u64)>,
}

fn cstr_field(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libnftnl returns NUL-terminated strings it owns.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Reads back chains, sets, rule counts and counters of `table` in `family`.
pub fn dump_table(sock: &NfSocket, table: &str, family: u16) -> io::Result<TableDump> {
    let mut out = TableDump::default();
    // SAFETY (all blocks below): each message is a complete nf_tables message from the kernel;
    // every object is allocated, parsed, read and freed within the block.
    for raw in sock.dump(&dump_request(libc::NFT_MSG_GETCHAIN, family, 1))? {
        unsafe {
            let c = alloc_or_abort(sys::nftnl_chain_alloc()).as_ptr();
            if sys::nftnl_chain_nlmsg_parse(raw.as_ptr().cast(), c) >= 0
                && cstr_field(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_TABLE as u16)) == table
            {
                out.chains.push(cstr_field(sys::nftnl_chain_get_str(
                    c,
                    sys::NFTNL_CHAIN_NAME as u16,
                )));
            }
            sys::nftnl_chain_free(c);
        }
    }
    for raw in sock.dump(&dump_request(libc::NFT_MSG_GETSET, family, 2))? {
        unsafe {
            let s = alloc_or_abort(sys::nftnl_set_alloc()).as_ptr();
            if sys::nftnl_set_nlmsg_parse(raw.as_ptr().cast(), s) >= 0
                && cstr_field(sys::nftnl_set_get_str(s, sys::NFTNL_SET_TABLE as u16)) == table
            {
                out.sets.push((
                    cstr_field(sys::nftnl_set_get_str(s, sys::NFTNL_SET_NAME as u16)),
                    sys::nftnl_set_get_u32(s, sys::NFTNL_SET_FLAGS as u16),
                    sys::nftnl_set_get_u32(s, sys::NFTNL_SET_KEY_LEN as u16),
                ));
            }
            sys::nftnl_set_free(s);
        }
    }
    for raw in sock.dump(&dump_request(libc::NFT_MSG_GETRULE, family, 3))? {
        unsafe {
            let r = alloc_or_abort(sys::nftnl_rule_alloc()).as_ptr();
            if sys::nftnl_rule_nlmsg_parse(raw.as_ptr().cast(), r) >= 0
                && cstr_field(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_TABLE as u16)) == table
            {
                let chain = cstr_field(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_CHAIN as u16));
                match out.rules.iter_mut().find(|(c, _)| *c == chain) {
                    Some((_, n)) => *n += 1,
                    None => out.rules.push((chain, 1)),
                }
            }
            sys::nftnl_rule_free(r);
        }
    }
    for raw in sock.dump(&dump_request(libc::NFT_MSG_GETOBJ, family, 4))? {
        unsafe {
            let o = alloc_or_abort(sys::nftnl_obj_alloc()).as_ptr();
            if sys::nftnl_obj_nlmsg_parse(raw.as_ptr().cast(), o) >= 0
                && cstr_field(sys::nftnl_obj_get_str(o, sys::NFTNL_OBJ_TABLE as u16)) == table
                && sys::nftnl_obj_get_u32(o, sys::NFTNL_OBJ_TYPE as u16) == NFT_OBJECT_COUNTER
            {
                out.counters.push((
                    cstr_field(sys::nftnl_obj_get_str(o, sys::NFTNL_OBJ_NAME as u16)),
                    sys::nftnl_obj_get_u64(o, sys::NFTNL_OBJ_CTR_PKTS as u16),
                    sys::nftnl_obj_get_u64(o, sys::NFTNL_OBJ_CTR_BYTES as u16),
                ));
            }
            sys::nftnl_obj_free(o);
        }
    }
    Ok(out)
}

/// Counts the elements of one set (reading the whole dump).
pub fn count_set_elems(
    sock: &NfSocket,
    table: &CStr,
    family: u16,
    set: &CStr,
) -> io::Result<usize> {
    let mut n = 0;
    for raw in sock.dump(&dump_set_elems_request(table, family, set, 5))? {
        // SAFETY: as in `dump_table`.
        unsafe {
            let s = alloc_or_abort(sys::nftnl_set_alloc()).as_ptr();
            if sys::nftnl_set_elems_nlmsg_parse(raw.as_ptr().cast(), s) >= 0 {
                let it = sys::nftnl_set_elems_iter_create(s);
                if !it.is_null() {
                    while !sys::nftnl_set_elems_iter_next(it).is_null() {
                        n += 1;
                    }
                    sys::nftnl_set_elems_iter_destroy(it);
                }
            }
            sys::nftnl_set_free(s);
        }
    }
    Ok(n)
}

// ---- budgets and per-element counters ----

/// `NFT_LIMIT_F_INV`: the limit matches when the rate is exceeded (`limit rate over`).
const NFT_LIMIT_F_INV: u32 = 1;
/// `NFT_LIMIT_PKT_BYTES`: the limit counts bytes, not packets.
const NFT_LIMIT_PKT_BYTES: u32 = 1;

impl Expr {
    /// `sreg != data`.
    pub fn cmp_neq(sreg: u32, data: &[u8]) -> Self {
        Expr::new(c"cmp")
            .with(sys::NFTNL_EXPR_CMP_SREG, Val::U32(sreg))
            .with(sys::NFTNL_EXPR_CMP_OP, Val::U32(libc::NFT_CMP_NEQ as u32))
            .with(sys::NFTNL_EXPR_CMP_DATA, Val::Data(data.to_vec()))
    }

    /// `limit rate over RATE/UNIT burst BURST packets`: matches packets beyond the rate.
    pub fn limit_over_packets(rate: u64, unit_secs: u64, burst: u32) -> Self {
        Expr::new(c"limit")
            .with(sys::NFTNL_EXPR_LIMIT_RATE, Val::U64(rate))
            .with(sys::NFTNL_EXPR_LIMIT_UNIT, Val::U64(unit_secs))
            .with(sys::NFTNL_EXPR_LIMIT_BURST, Val::U32(burst))
            .with(sys::NFTNL_EXPR_LIMIT_TYPE, Val::U32(0)) // NFT_LIMIT_PKTS
            .with(sys::NFTNL_EXPR_LIMIT_FLAGS, Val::U32(NFT_LIMIT_F_INV))
    }

    /// `limit rate over RATE bytes/second burst BURST bytes`: matches packets beyond the byte
    /// rate. The kernel's bucket holds `rate + burst` bytes.
    pub fn limit_over_bytes(rate: u64, burst: u32) -> Self {
        Expr::new(c"limit")
            .with(sys::NFTNL_EXPR_LIMIT_RATE, Val::U64(rate))
            .with(sys::NFTNL_EXPR_LIMIT_UNIT, Val::U64(1))
            .with(sys::NFTNL_EXPR_LIMIT_BURST, Val::U32(burst))
            .with(sys::NFTNL_EXPR_LIMIT_TYPE, Val::U32(NFT_LIMIT_PKT_BYTES))
            .with(sys::NFTNL_EXPR_LIMIT_FLAGS, Val::U32(NFT_LIMIT_F_INV))
    }

    /// `sreg > data` (unsigned, big-endian data: see [`Expr::hton64`]).
    pub fn cmp_gt(sreg: u32, data: &[u8]) -> Self {
        Expr::new(c"cmp")
            .with(sys::NFTNL_EXPR_CMP_SREG, Val::U32(sreg))
            .with(sys::NFTNL_EXPR_CMP_OP, Val::U32(libc::NFT_CMP_GT as u32))
            .with(sys::NFTNL_EXPR_CMP_DATA, Val::Data(data.to_vec()))
    }

    /// `ct original KEY` (a per-direction key such as bytes or packets) loaded into `dreg`.
    pub fn ct_load_original(key: u32, dreg: u32) -> Self {
        Expr::new(c"ct")
            .with(sys::NFTNL_EXPR_CT_KEY, Val::U32(key))
            .with(sys::NFTNL_EXPR_CT_DREG, Val::U32(dreg))
            .with(sys::NFTNL_EXPR_CT_DIR, Val::U8(0)) // IP_CT_DIR_ORIGINAL
    }

    /// Turns the 64-bit host-order value in `reg` into network order, so `cmp gt` (which
    /// compares bytes) compares numbers. `nft` does the same for `ct bytes > N`.
    pub fn hton64(reg: u32) -> Self {
        Expr::new(c"byteorder")
            .with(sys::NFTNL_EXPR_BYTEORDER_SREG, Val::U32(reg))
            .with(sys::NFTNL_EXPR_BYTEORDER_DREG, Val::U32(reg))
            .with(
                sys::NFTNL_EXPR_BYTEORDER_OP,
                Val::U32(libc::NFT_BYTEORDER_HTON as u32),
            )
            .with(sys::NFTNL_EXPR_BYTEORDER_LEN, Val::U32(8))
            .with(sys::NFTNL_EXPR_BYTEORDER_SIZE, Val::U32(8))
    }

    /// `jump CHAIN`.
    pub fn jump(chain: &CStr) -> Self {
        Expr::new(c"immediate")
            .with(sys::NFTNL_EXPR_IMM_DREG, Val::U32(REG_VERDICT))
            .with(sys::NFTNL_EXPR_IMM_VERDICT, Val::U32(libc::NFT_JUMP as u32))
            .with(sys::NFTNL_EXPR_IMM_CHAIN, Val::Str(chain.to_owned()))
    }
}

impl Set {
    /// Gives every element of the set its own counter (`counter` in the set declaration;
    /// kernel 5.11+). Elements added later get a fresh counter; re-adding an element that
    /// exists keeps its counter.
    pub fn count_elements(&mut self) {
        // SAFETY: the expression is handed over to the set, which frees it with itself.
        unsafe {
            let e = alloc_or_abort(sys::nftnl_expr_alloc(c"counter".as_ptr()));
            sys::nftnl_set_add_expr(self.ptr.as_ptr(), e.as_ptr());
        }
    }
}
