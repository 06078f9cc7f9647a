//! A reading of the pickles in a TorchScript archive (`data.pkl`, `constants.pkl`) that runs nothing:
//! it follows libtorch's own unpickler (`torch/csrc/jit/serialization/unpickler.cpp`) opcode by opcode
//! far enough to see what loading would do with the archive, before libtorch does it:
//! - every storage a tensor is built on (the persistent id `("storage", dtype, key, location, numel)`):
//!   libtorch wraps the record `<pickle>/<key>` in a storage of `numel × itemsize` bytes without
//!   comparing that with the record's size, so a short record makes tensors read past it;
//! - every global it names (`__torch__.torch.classes.…` objects run native `__setstate__` code while
//!   loading; `torch._utils._rebuild_sparse_tensor` builds a tensor without checking its indices).
//!
//! Where this reading and libtorch's could differ, it stops with an error instead of guessing: an
//! opcode libtorch does not read, a value it cannot name, a malformed stack. A caller treats that as
//! "cannot be scanned".

/// A storage as a pickle declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Storage {
    /// The record's name under the pickle's folder (`data/<key>`).
    pub key: String,
    /// The dtype's name, for messages (`float32`).
    pub dtype: &'static str,
    /// `numel × itemsize`: how many bytes libtorch reads from the record; None on overflow.
    pub bytes: Option<u64>,
    pub numel: i64,
}

/// What a pickle would make libtorch do.
#[derive(Debug, Default, PartialEq)]
pub struct PickleScan {
    pub storages: Vec<Storage>,
    /// Every global (`module`, `name`) in order of appearance, each once.
    pub globals: Vec<(String, String)>,
}

/// Why a pickle cannot be scanned: where this reading and libtorch's could differ, or where the bytes
/// are no pickle libtorch would read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PickleError {
    #[error("not a protocol-2 pickle")]
    NotProtocol2,
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("a GLOBAL without its newline")]
    GlobalWithoutNewline,
    #[error("a GLOBAL that is not UTF-8")]
    GlobalNotUtf8,
    #[error("a string longer than memory")]
    StringTooLong,
    #[error("a string that is not UTF-8")]
    StringNotUtf8,
    #[error("a stack deeper than any model needs")]
    StackTooDeep,
    #[error("too many MARKs")]
    TooManyMarks,
    #[error("an empty stack")]
    EmptyStack,
    #[error("no MARK")]
    NoMark,
    #[error("a MARK above the stack")]
    MarkAboveStack,
    #[error("BINPUT on an empty stack")]
    MemoizeEmptyStack,
    #[error("memo id {0} out of order")]
    MemoOutOfOrder(usize),
    #[error("memo id {0} never stored")]
    MemoNeverStored(usize),
    /// A `torch.<name>` global that is neither a storage class, a quantization scheme nor a device.
    #[error("the global torch.{0}, which this scan cannot value")]
    UnknownTorchGlobal(String),
    #[error("a tensor subclass (torch._tensor._rebuild_from_type_v2)")]
    TensorSubclass,
    #[error("a persistent id that is not a tuple")]
    PersistentIdNotTuple,
    #[error("a persistent id that is not a storage")]
    PersistentIdNotStorage,
    #[error("a storage id whose key or kind is not a string")]
    StorageTextNotString,
    #[error("a storage id whose dtype or size is not an int")]
    StorageNumberNotInt,
    #[error("a storage of unknown dtype {0}")]
    UnknownDtype(i64),
    #[error("REDUCE without its arguments")]
    ReduceWithoutArguments,
    #[error("REDUCE on something that is not a global")]
    ReduceOnNonGlobal,
    #[error("REDUCE on an unknown global")]
    ReduceOnUnknownGlobal,
    #[error("a tuple without its elements")]
    TupleWithoutElements,
    #[error("a LONG1 that is not 8 bytes")]
    Long1Not8Bytes,
    /// APPEND(S) without a list, SETITEM(S) without a dict below their items.
    #[error("{op} without a {container}")]
    NoContainer {
        op: &'static str,
        container: &'static str,
    },
    #[error("a DICT with an odd number of items")]
    DictOddItems,
    #[error("{0} values left at the end, where libtorch expects one")]
    LeftOver(usize),
    #[error("opcode 0x{op:02x} at byte {at}, which libtorch does not read")]
    UnknownOpcode { op: u8, at: usize },
}

type Result<T> = std::result::Result<T, PickleError>;

/// Nesting and size limits: a healthy `data.pkl` stays far below each.
const MAX_STACK: usize = 1 << 20;
const MAX_MEMO: usize = 1 << 22;

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Tuple(Vec<Value>),
    List,
    Dict,
    /// Whatever REDUCE / BUILD / BINPERSID produced (an object, a tensor, a device): never an int or a
    /// string, so it can never stand where a storage's dtype, key or size is read.
    Other,
}

/// Element size and name of each c10::ScalarType code libtorch can store (c10/core/ScalarType.h).
fn scalar_type(code: i64) -> Option<(u64, &'static str)> {
    Some(match code {
        0 => (1, "uint8"),
        1 => (1, "int8"),
        2 => (2, "int16"),
        3 => (4, "int32"),
        4 => (8, "int64"),
        5 => (2, "float16"),
        6 => (4, "float32"),
        7 => (8, "float64"),
        8 => (4, "complex32"),
        9 => (8, "complex64"),
        10 => (16, "complex128"),
        11 => (1, "bool"),
        12 => (1, "qint8"),
        13 => (1, "quint8"),
        14 => (4, "qint32"),
        15 => (2, "bfloat16"),
        16 => (1, "quint4x2"),
        17 => (1, "quint2x4"),
        23 => (1, "float8_e5m2"),
        24 => (1, "float8_e4m3fn"),
        25 => (1, "float8_e5m2fnuz"),
        26 => (1, "float8_e4m3fnuz"),
        27 => (2, "uint16"),
        28 => (4, "uint32"),
        29 => (8, "uint64"),
        _ => return None,
    })
}

/// The ScalarType code of a `torch.<Name>Storage` global (libtorch's readGlobal pushes it as an int).
fn storage_class(name: &str) -> Option<i64> {
    let dtype = name.strip_suffix("Storage")?;
    let names = [
        "Byte",
        "Char",
        "Short",
        "Int",
        "Long",
        "Half",
        "Float",
        "Double",
        "ComplexHalf",
        "ComplexFloat",
        "ComplexDouble",
        "Bool",
        "QInt8",
        "QUInt8",
        "QInt32",
        "BFloat16",
        "QUInt4x2",
        "QUInt2x4",
    ];
    if let Some(code) = names.iter().position(|n| *n == dtype) {
        return Some(code as i64);
    }
    let more = [
        ("Float8_e5m2", 23),
        ("Float8_e4m3fn", 24),
        ("Float8_e5m2fnuz", 25),
        ("Float8_e4m3fnuz", 26),
        ("UInt16", 27),
        ("UInt32", 28),
        ("UInt64", 29),
    ];
    more.iter().find(|(n, _)| *n == dtype).map(|(_, c)| *c)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.data.len())
            .ok_or(PickleError::Truncated(self.pos))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn le<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.le()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.le()?))
    }
    /// A GLOBAL's module or name: the bytes up to the next newline.
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or(PickleError::GlobalWithoutNewline)?;
        self.pos += end + 1;
        String::from_utf8(rest[..end].to_vec()).map_err(|_| PickleError::GlobalNotUtf8)
    }
    fn text(&mut self, len: u64) -> Result<String> {
        let len = usize::try_from(len).map_err(|_| PickleError::StringTooLong)?;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| PickleError::StringNotUtf8)
    }
}

struct Machine {
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: Vec<Value>,
    /// How many globals libtorch would have registered (each GLOBAL that is not a storage class or a
    /// `torch` enum pushes its index).
    globals: i64,
    /// Index of the `__main__.IntList` globals: REDUCE on them leaves their argument on the stack.
    keeps_argument: Vec<i64>,
    /// Index of the `collections.OrderedDict` globals: REDUCE on them makes an empty dict.
    makes_dict: Vec<i64>,
    scan: PickleScan,
}

impl Machine {
    fn push(&mut self, v: Value) -> Result<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(PickleError::StackTooDeep);
        }
        self.stack.push(v);
        Ok(())
    }
    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().ok_or(PickleError::EmptyStack)
    }
    fn pop_mark(&mut self) -> Result<usize> {
        let start = self.marks.pop().ok_or(PickleError::NoMark)?;
        if start > self.stack.len() {
            return Err(PickleError::MarkAboveStack);
        }
        Ok(start)
    }
    fn memoize(&mut self, id: usize) -> Result<()> {
        let top = self
            .stack
            .last()
            .ok_or(PickleError::MemoizeEmptyStack)?
            .clone();
        match id.cmp(&self.memo.len()) {
            std::cmp::Ordering::Less => self.memo[id] = top,
            std::cmp::Ordering::Equal if id < MAX_MEMO => self.memo.push(top),
            _ => return Err(PickleError::MemoOutOfOrder(id)),
        }
        Ok(())
    }
    fn get(&mut self, id: usize) -> Result<()> {
        let v = self
            .memo
            .get(id)
            .cloned()
            .ok_or(PickleError::MemoNeverStored(id))?;
        self.push(v)
    }
    fn global(&mut self, module: String, name: String) -> Result<()> {
        if !self
            .scan
            .globals
            .iter()
            .any(|(m, n)| *m == module && *n == name)
        {
            self.scan.globals.push((module.clone(), name.clone()));
        }
        if module == "torch" {
            if let Some(code) = storage_class(&name) {
                return self.push(Value::Int(code));
            }
            // Quantization schemes are pushed as ints too (c10::QScheme); anything else under
            // `torch` is refused by libtorch, except `torch.device`, a global like the others.
            let qschemes = [
                "per_tensor_affine",
                "per_channel_affine",
                "per_tensor_symmetric",
                "per_channel_symmetric",
                "per_channel_affine_float_qparams",
            ];
            if let Some(code) = qschemes.iter().position(|q| *q == name) {
                return self.push(Value::Int(code as i64));
            }
            if name != "device" {
                return Err(PickleError::UnknownTorchGlobal(name));
            }
        }
        // libtorch reads the two globals after this one in a way of its own (its
        // `skip_next_read_global`): TorchScript never writes it, so the scan does not follow it.
        if module == "torch._tensor" && name == "_rebuild_from_type_v2" {
            return Err(PickleError::TensorSubclass);
        }
        if module == "__main__" && name == "IntList" {
            self.keeps_argument.push(self.globals);
        }
        if module == "collections" && name == "OrderedDict" {
            self.makes_dict.push(self.globals);
        }
        self.globals += 1;
        self.push(Value::Int(self.globals - 1))
    }
    fn persistent_id(&mut self) -> Result<()> {
        let Value::Tuple(args) = self.pop()? else {
            return Err(PickleError::PersistentIdNotTuple);
        };
        let text = |v: Option<&Value>| match v {
            Some(Value::Str(s)) => Ok(s.clone()),
            _ => Err(PickleError::StorageTextNotString),
        };
        if text(args.first())? != "storage" {
            return Err(PickleError::PersistentIdNotStorage);
        }
        let (Some(Value::Int(code)), Some(Value::Int(numel))) = (args.get(1), args.get(4)) else {
            return Err(PickleError::StorageNumberNotInt);
        };
        let key = text(args.get(2))?;
        text(args.get(3))?;
        let (itemsize, dtype) = scalar_type(*code).ok_or(PickleError::UnknownDtype(*code))?;
        let bytes = u64::try_from(*numel)
            .ok()
            .and_then(|n| n.checked_mul(itemsize));
        self.scan.storages.push(Storage {
            key,
            dtype,
            bytes,
            numel: *numel,
        });
        self.push(Value::Other)
    }
    /// REDUCE and BUILD: `<global index> <argument>` becomes the global's result.
    fn call(&mut self) -> Result<()> {
        if self.stack.len() < 2 {
            return Err(PickleError::ReduceWithoutArguments);
        }
        // An OrderedDict already became a dict: its argument is dropped.
        if matches!(self.stack[self.stack.len() - 2], Value::Dict) {
            self.pop()?;
            return Ok(());
        }
        let argument = self.pop()?;
        let Value::Int(index) = self.pop()? else {
            return Err(PickleError::ReduceOnNonGlobal);
        };
        if index < 0 || index >= self.globals {
            return Err(PickleError::ReduceOnUnknownGlobal);
        }
        let result = if self.keeps_argument.contains(&index) {
            argument
        } else if self.makes_dict.contains(&index) {
            Value::Dict
        } else {
            Value::Other
        };
        self.push(result)
    }
    fn tuple(&mut self, n: usize) -> Result<()> {
        if self.stack.len() < n {
            return Err(PickleError::TupleWithoutElements);
        }
        let items = self.stack.split_off(self.stack.len() - n);
        self.push(Value::Tuple(items))
    }
}

/// Reads `data` as libtorch's unpickler would, recording storages and globals; runs nothing.
pub fn scan(data: &[u8]) -> Result<PickleScan> {
    let mut r = Reader { data, pos: 0 };
    let mut m = Machine {
        stack: Vec::new(),
        marks: Vec::new(),
        memo: Vec::new(),
        globals: 0,
        keeps_argument: Vec::new(),
        makes_dict: Vec::new(),
        scan: PickleScan::default(),
    };
    if r.u8()? != 0x80 || r.u8()? != 2 {
        return Err(PickleError::NotProtocol2);
    }
    loop {
        let at = r.pos;
        let op = r.u8()?;
        match op {
            b']' => m.push(Value::List)?,
            b')' => m.push(Value::Tuple(Vec::new()))?,
            b'}' => m.push(Value::Dict)?,
            b'q' => m.memoize(r.u8()?.into())?,
            b'r' => m.memoize(r.u32()? as usize)?,
            b'h' => m.get(r.u8()?.into())?,
            b'j' => m.get(r.u32()? as usize)?,
            b'(' => {
                if m.marks.len() >= MAX_STACK {
                    return Err(PickleError::TooManyMarks);
                }
                m.marks.push(m.stack.len())
            }
            0x88 | 0x89 => m.push(Value::Bool)?,
            b'N' => m.push(Value::None)?,
            b'K' => m.push(Value::Int(r.u8()?.into()))?,
            b'M' => m.push(Value::Int(r.u16()?.into()))?,
            b'J' => m.push(Value::Int(i32::from_le_bytes(r.le()?).into()))?,
            0x8a => {
                if r.u8()? != 8 {
                    return Err(PickleError::Long1Not8Bytes);
                }
                let v = i64::from_le_bytes(r.le()?);
                m.push(Value::Int(v))?
            }
            b'X' => {
                let len = r.u32()?.into();
                m.push(Value::Str(r.text(len)?))?
            }
            0x8d => {
                let len = u64::from_le_bytes(r.le()?);
                m.push(Value::Str(r.text(len)?))?
            }
            b'G' => {
                r.take(8)?;
                m.push(Value::Float)?
            }
            b't' => {
                let start = m.pop_mark()?;
                m.tuple(m.stack.len() - start)?
            }
            0x85 => m.tuple(1)?,
            0x86 => m.tuple(2)?,
            0x87 => m.tuple(3)?,
            b'e' => {
                let start = m.pop_mark()?;
                if start == 0 || !matches!(m.stack[start - 1], Value::List) {
                    return Err(PickleError::NoContainer {
                        op: "APPENDS",
                        container: "list",
                    });
                }
                m.stack.truncate(start);
            }
            b'a' => {
                if m.stack.len() < 2 || !matches!(m.stack[m.stack.len() - 2], Value::List) {
                    return Err(PickleError::NoContainer {
                        op: "APPEND",
                        container: "list",
                    });
                }
                m.pop()?;
            }
            b'l' => {
                let start = m.pop_mark()?;
                m.stack.truncate(start);
                m.push(Value::List)?
            }
            b'd' => {
                let start = m.pop_mark()?;
                if !(m.stack.len() - start).is_multiple_of(2) {
                    return Err(PickleError::DictOddItems);
                }
                m.stack.truncate(start);
                m.push(Value::Dict)?
            }
            b'u' => {
                let start = m.pop_mark()?;
                if start == 0
                    || !(m.stack.len() - start).is_multiple_of(2)
                    || !matches!(m.stack[start - 1], Value::Dict)
                {
                    return Err(PickleError::NoContainer {
                        op: "SETITEMS",
                        container: "dict",
                    });
                }
                m.stack.truncate(start);
            }
            b's' => {
                let n = m.stack.len();
                if n < 3 || !matches!(m.stack[n - 3], Value::Dict) {
                    return Err(PickleError::NoContainer {
                        op: "SETITEM",
                        container: "dict",
                    });
                }
                m.stack.truncate(n - 2);
            }
            b'.' => {
                if m.stack.len() != 1 {
                    return Err(PickleError::LeftOver(m.stack.len()));
                }
                return Ok(m.scan);
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                m.global(module, name)?
            }
            0x81 => {
                m.pop()?;
            }
            b'b' | b'R' => m.call()?,
            b'Q' => m.persistent_id()?,
            _ => return Err(PickleError::UnknownOpcode { op, at }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protocol-2 pickle of `ops` followed by STOP.
    fn pickle(ops: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80, 2];
        out.extend_from_slice(ops);
        out.push(b'.');
        out
    }

    fn unicode(s: &str) -> Vec<u8> {
        let mut out = vec![b'X'];
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out
    }

    /// `("storage", <dtype>, key, "cpu", <numel>)` as BINPERSID, with the ops that push the dtype
    /// and the element count.
    fn storage_id(dtype: &[u8], key: &str, numel: &[u8]) -> Vec<u8> {
        let mut ops = b"(".to_vec();
        ops.extend(unicode("storage"));
        ops.extend_from_slice(dtype);
        ops.extend(unicode(key));
        ops.extend(unicode("cpu"));
        ops.extend_from_slice(numel);
        ops.extend_from_slice(b"tQ");
        ops
    }

    /// `("storage", torch.<class>, key, "cpu", numel)` as BINPERSID, the way torch.jit.save writes it.
    fn storage(class: &str, key: &str, numel: i32) -> Vec<u8> {
        let mut count = vec![b'J'];
        count.extend_from_slice(&numel.to_le_bytes());
        storage_id(format!("ctorch\n{class}\n").as_bytes(), key, &count)
    }

    #[test]
    fn storages_are_read_with_their_declared_bytes() {
        let mut ops = b"(".to_vec();
        ops.extend(storage("FloatStorage", "0", 32));
        ops.extend(b"q\x00");
        ops.extend(storage("LongStorage", "1", 3));
        ops.extend(b"h\x00t");
        let scan = scan(&pickle(&ops)).unwrap();
        assert_eq!(
            scan.storages,
            vec![
                Storage {
                    key: "0".into(),
                    dtype: "float32",
                    bytes: Some(128),
                    numel: 32
                },
                Storage {
                    key: "1".into(),
                    dtype: "int64",
                    bytes: Some(24),
                    numel: 3
                },
            ]
        );
        assert_eq!(
            scan.globals,
            vec![
                ("torch".into(), "FloatStorage".into()),
                ("torch".into(), "LongStorage".into())
            ]
        );
    }

    #[test]
    fn a_memoised_id_is_read_as_libtorch_reads_it() {
        // A memo id out of order (libtorch's memo grows one id at a time).
        assert!(scan(&pickle(b"J\x00\x00\x00\x40q\x05")).is_err());
        // A half storage whose element count is memo 0.
        let memoised = storage_id(b"ctorch\nHalfStorage\n", "7", b"h\x00");
        let ops = [&b"J\x00\x00\x00\x40q\x000"[..], &memoised].concat();
        // `0` (POP) is not an opcode libtorch reads: the scan refuses instead of guessing.
        assert_eq!(
            scan(&pickle(&ops)).unwrap_err(),
            PickleError::UnknownOpcode { op: 0x30, at: 9 }
        );
        // The size comes from the memo: the scan sees the memoised value.
        let ops = [&b"(J\x00\x00\x00\x40q\x00"[..], &memoised, b"t"].concat();
        let storages = scan(&pickle(&ops)).unwrap().storages;
        assert_eq!(
            (storages[0].numel, storages[0].bytes),
            (1 << 30, Some(1 << 31))
        );
        // Without the outer tuple two values stay on the stack: libtorch refuses that too.
        assert!(scan(&pickle(&ops[1..ops.len() - 1])).is_err());
    }

    #[test]
    fn whatever_the_scan_cannot_value_is_an_error_not_a_guess() {
        for bad in [
            &b""[..],
            b"\x80\x03.",
            b"\x80\x02",
            b"\x80\x02t.",
            b"\x80\x02R.",
            b"\x80\x02)Q.",
            b"\x80\x02ctorch\nSecretStorage\n.",
            b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\n.",
            b"\x80\x02cbuiltins\nlen",
            b"\x80\x02\x8a\x04\x00\x00\x00\x00.",
            b"\x80\x02X\xff\xff\xff\xff.",
        ] {
            assert!(scan(bad).is_err(), "{bad:?}");
        }
        // A dtype or a size that is a reduced value (an object), not an int.
        let ops = storage_id(b"cbuiltins\ncomplex\n)R", "0", b"K\x01");
        assert_eq!(
            scan(&pickle(&ops)).unwrap_err().to_string(),
            "a storage id whose dtype or size is not an int"
        );
    }

    #[test]
    fn an_absurd_size_overflows_to_none_and_a_negative_one_too() {
        let ops = storage("DoubleStorage", "0", -1);
        assert_eq!(scan(&pickle(&ops)).unwrap().storages[0].bytes, None);
        let ops = storage_id(
            b"ctorch\nDoubleStorage\n",
            "0",
            b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f",
        );
        assert_eq!(scan(&pickle(&ops)).unwrap().storages[0].bytes, None);
    }

    #[test]
    fn the_fixtures_pickles_are_read() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let file = std::fs::File::open(root.join("fixtures/models/cnn_bn.pt")).unwrap();
        let mut zip = zip::ZipArchive::new(file).unwrap();
        let names: Vec<String> = zip.file_names().map(String::from).collect();
        let data = names.iter().find(|n| n.ends_with("/data.pkl")).unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut zip.by_name(data).unwrap(), &mut bytes).unwrap();
        let scan = scan(&bytes).unwrap();
        assert!(scan.storages.len() >= 6, "{scan:?}");
        assert!(scan.storages.iter().all(|s| s.bytes.is_some()));
        assert!(scan.globals.iter().any(|(m, _)| m.starts_with("__torch__")));
    }
}
