//! Rust UDFs written with arroyo-udf-plugin, one crate per function under
//! `udfs/`, built as cdylibs and called a batch at a time through the Arrow C
//! Data Interface with arroyo-udf-common's ABI (`__run(FfiArrays) -> RunResult`),
//! as Arroyo hosts them. The plugin pins arrow 51 and the engine uses arrow 59:
//! only the C Data Interface crosses the boundary, so the versions may differ.
//!
//! The ABI types are declared here again over arrow 59's FFI structs (the
//! plugin's own crate would drag arrow 51 into the engine).
//!
//! Signatures come from the UDF's source (`#[udf] fn name(args) -> ret`), as
//! Arroyo reads them; a UDF with `Vec<T>` arguments is an aggregate (UDAF),
//! called once per group with all its values. The `/*[dependencies]*/` header
//! of each source must list what its Cargo.toml does (Arroyo builds from the
//! header, Cargo from the manifest: they must not drift apart).
//!
//! Errors: a UDF that fails on a batch is retried row by row. A row that still
//! fails becomes null, is counted (`notiflow_udf_errors_total{udf}`) and is
//! reported to the pipeline through [`UdfFailures`] with the record it came
//! from: the planner appends the hidden lineage columns to every UDF call
//! (see `with_lineage_args`), and the runtime dead-letters that record with
//! reason `udf_error` and drops its outputs. A UDF whose failures mean
//! something to producers names its own reason with a line in its source:
//! `// notiflow: dead_letter_reason = template_error`.
//!
//! Types: SQL TIMESTAMPs given to an `i64` argument arrive as epoch
//! milliseconds (whatever the column's unit); strings of any Arrow string
//! type arrive as Utf8 (arrow 51 cannot import Utf8View).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, ListArray, make_array, new_null_array};
use arrow::compute::{cast, concat};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, TimeUnit};
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi, to_ffi};
use datafusion::common::{DataFusionError, Result, ScalarValue, plan_err};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, create_udaf,
};

#[repr(C)]
struct FfiArraySchema(FFI_ArrowArray, FFI_ArrowSchema);

#[repr(C)]
struct FfiArrays {
    ptr: *mut FfiArraySchema,
    len: usize,
    capacity: usize,
    error: bool,
}

#[repr(C)]
#[allow(dead_code)] // Constructed on the other side of the FFI boundary.
enum RunResult {
    Ok(FfiArraySchema),
    Err,
}

type RunFn = unsafe extern "C-unwind" fn(FfiArrays) -> RunResult;

/// One argument or return type of a UDF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdfType {
    pub data_type: DataType,
    pub nullable: bool,
}

/// A UDF found in `udfs/`: its signature, and its library if it is built.
#[derive(Debug, Clone)]
pub struct UdfSource {
    pub name: String,
    /// For an aggregate, the element type of each `Vec<T>` argument.
    pub args: Vec<UdfType>,
    pub ret: UdfType,
    /// `Vec<T>` arguments: called once per group (a UDAF).
    pub aggregate: bool,
    pub library: PathBuf,
    /// The dead-letter reason of records this UDF fails on.
    pub dead_letter_reason: String,
}

/// The line a UDF source uses to name its dead-letter reason.
const REASON_MARKER: &str = "// notiflow: dead_letter_reason =";

/// The UDF's own dead-letter reason, `udf_error` when it names none.
fn dead_letter_reason(source: &str) -> std::result::Result<String, String> {
    let Some(line) = source.lines().find_map(|l| l.trim().strip_prefix(REASON_MARKER)) else {
        return Ok("udf_error".into());
    };
    let reason = line.trim();
    if reason.is_empty() || !reason.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
        return Err(format!("dead_letter_reason `{reason}`: lower-case letters and '_' only"));
    }
    Ok(reason.to_string())
}

/// Reads the `#[udf]` signature of every crate in `udfs_dir`; `lib_dir` holds
/// the built `lib<name>.so` files.
pub fn discover(udfs_dir: &Path, lib_dir: &Path) -> std::result::Result<Vec<UdfSource>, String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(udfs_dir) else { return Ok(found) };
    let mut crates: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join("src/lib.rs").exists()).collect();
    crates.sort();
    for dir in crates {
        let source_path = dir.join("src/lib.rs");
        let source = std::fs::read_to_string(&source_path).map_err(|e| format!("{}: {e}", source_path.display()))?;
        let manifest_path = dir.join("Cargo.toml");
        let manifest = std::fs::read_to_string(&manifest_path).map_err(|e| format!("{}: {e}", manifest_path.display()))?;
        check_dependencies(&source, &manifest).map_err(|e| format!("{}:1: {e}", source_path.display()))?;
        let signature = parse_signature(&source).map_err(|e| format!("{}: {e}", source_path.display()))?;
        let dead_letter_reason = dead_letter_reason(&source).map_err(|e| format!("{}: {e}", source_path.display()))?;
        found.push(UdfSource { library: lib_dir.join(format!("lib{}.so", signature.name)), dead_letter_reason, ..signature });
    }
    Ok(found)
}

/// The header's `[dependencies]` must equal the manifest's, minus the plugin
/// itself (which Arroyo provides).
fn check_dependencies(source: &str, manifest: &str) -> std::result::Result<(), String> {
    let header = source
        .trim_start()
        .strip_prefix("/*")
        .and_then(|rest| rest.split_once("*/"))
        .map(|(inside, _)| inside)
        .ok_or("a UDF source starts with Arroyo's /*\\n[dependencies]\\n...\\n*/ header (empty when it needs no crates)")?;
    let header: toml::Table = header.parse().map_err(|e| format!("the /*[dependencies]*/ header is not TOML: {e}"))?;
    let manifest: toml::Table = manifest.parse().map_err(|e| format!("Cargo.toml: {e}"))?;
    let listed = |table: &toml::Table| -> toml::Table {
        let mut deps = table.get("dependencies").and_then(|d| d.as_table()).cloned().unwrap_or_default();
        deps.remove("arroyo-udf-plugin");
        deps
    };
    let (in_header, in_manifest) = (listed(&header), listed(&manifest));
    if in_header != in_manifest {
        let show = |t: &toml::Table| if t.is_empty() { "nothing".to_string() } else { t.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", ") };
        return Err(format!(
            "the /*[dependencies]*/ header lists {} but Cargo.toml lists {}: keep them the same (Arroyo builds from the header)",
            show(&in_header),
            show(&in_manifest)
        ));
    }
    Ok(())
}

/// `#[udf] fn name(a: T, b: Option<U>) -> R` (Arroyo's supported types).
fn parse_signature(source: &str) -> std::result::Result<UdfSource, String> {
    // The attribute on a line of its own (not in a comment that mentions it).
    let at = source.match_indices("#[udf]").find(|(i, _)| source[..*i].rsplit('\n').next().is_some_and(|l| l.trim().is_empty()));
    let (at, _) = at.ok_or("no #[udf] function")?;
    let after = &source[at + "#[udf]".len()..];
    let after = after.trim_start();
    let after = after.strip_prefix("pub ").unwrap_or(after);
    let after = after.strip_prefix("fn ").ok_or("#[udf] must be followed by `fn`")?;
    let open = after.find('(').ok_or("no argument list")?;
    let name = after[..open].trim().to_string();
    let close = after.find(')').ok_or("no argument list end")?;
    let mut aggregate = false;
    let args = after[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            let (_, t) = a.split_once(':').ok_or_else(|| format!("argument `{a}` has no type"))?;
            let t = t.trim();
            match t.strip_prefix("Vec<").and_then(|r| r.strip_suffix('>')).filter(|inner| *inner != "u8") {
                Some(inner) => {
                    aggregate = true;
                    rust_type(inner.trim())
                }
                None => rust_type(t),
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let rest = &after[close + 1..];
    let ret = rest.split('{').next().unwrap_or_default().trim();
    let ret = ret.strip_prefix("->").ok_or("the UDF must return a value")?.trim();
    if args.is_empty() {
        return Err("a UDF takes at least one argument".into());
    }
    Ok(UdfSource { name, args, ret: rust_type(ret)?, aggregate, library: PathBuf::new(), dead_letter_reason: "udf_error".into() })
}

fn rust_type(t: &str) -> std::result::Result<UdfType, String> {
    if let Some(inner) = t.strip_prefix("Option<").and_then(|r| r.strip_suffix('>')) {
        return rust_type(inner.trim()).map(|u| UdfType { nullable: true, ..u });
    }
    let data_type = match t {
        "&str" | "String" => DataType::Utf8,
        "&[u8]" | "Vec<u8>" => DataType::Binary,
        "bool" => DataType::Boolean,
        "i32" => DataType::Int32,
        "i64" => DataType::Int64,
        "u32" => DataType::UInt32,
        "u64" => DataType::UInt64,
        "f32" => DataType::Float32,
        "f64" => DataType::Float64,
        other => return Err(format!("type `{other}` is not supported by arroyo-udf-plugin UDFs")),
    };
    Ok(UdfType { data_type, nullable: false })
}

/// A loaded UDF library. Arrays it returned are freed by its code, so it
/// stays loaded for the life of the process.
struct Loaded {
    _library: libloading::Library,
    run: RunFn,
}

fn open(udf: &UdfSource) -> std::result::Result<Arc<Loaded>, String> {
    // SAFETY: the library is a UDF built from this repository's udfs/ workspace.
    let library = unsafe { libloading::Library::new(&udf.library) }.map_err(|e| format!("{}: {e}", udf.library.display()))?;
    let run: RunFn = *unsafe { library.get::<RunFn>(b"__run\0") }.map_err(|e| format!("{}: no __run symbol: {e}", udf.library.display()))?;
    let loaded = Arc::new(Loaded { _library: library, run });
    // Libraries are never unloaded: results' buffers are freed by their code.
    std::mem::forget(loaded.clone());
    Ok(loaded)
}

/// A row a UDF failed on, with the record it came from when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdfFailure {
    pub udf: String,
    /// Dead-letter reason (`udf_error` unless the UDF names its own).
    pub reason: String,
    /// (source table index, partition, offset).
    pub origin: Option<(i32, i32, i64)>,
}

/// Where the UDFs of one pipeline report failed rows (drained per batch).
#[derive(Debug, Clone, Default)]
pub struct UdfFailures(Arc<Mutex<Vec<UdfFailure>>>);

impl UdfFailures {
    fn push(&self, failure: UdfFailure) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(failure);
    }

    pub fn drain(&self) -> Vec<UdfFailure> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Extra arguments the planner appends to every scalar UDF call:
/// `_source`, `_partition`, `_offset` (see `UdfFailure::origin`).
pub const LINEAGE_ARGS: usize = 3;

/// A built scalar UDF as a DataFusion function.
pub struct HostUdf {
    name: String,
    library: PathBuf,
    args: Vec<DataType>,
    ret: DataType,
    signature: Signature,
    loaded: Arc<Loaded>,
    failures: UdfFailures,
    dead_letter_reason: String,
}

impl std::fmt::Debug for HostUdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostUdf").field("name", &self.name).field("library", &self.library).finish()
    }
}

impl PartialEq for HostUdf {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.library == other.library
    }
}
impl Eq for HostUdf {}
impl Hash for HostUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.library.hash(state);
    }
}

impl HostUdf {
    /// Number of arguments the SQL passes (lineage columns excluded).
    pub fn arity(&self) -> usize {
        self.args.len()
    }
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// The type an argument is planned with: the declared one, except values the
/// call converts itself (timestamps to epoch ms, other string types).
fn coerce(udf: &str, i: usize, actual: &DataType, declared: &DataType) -> Result<DataType> {
    Ok(match (actual, declared) {
        (a, d) if a == d => d.clone(),
        (DataType::Timestamp(..), DataType::Int64) => actual.clone(),
        (a, DataType::Utf8) if is_string(a) => actual.clone(),
        (DataType::Null, d) => d.clone(),
        (a, d) if arrow::compute::can_cast_types(a, d) && !matches!(a, DataType::Timestamp(..) | DataType::Date32 | DataType::Date64) => d.clone(),
        (a, d) => return plan_err!("{udf}: argument {} is {a}, but the UDF takes {d}", i + 1),
    })
}

/// Casts one argument to the declared type, timestamps to epoch ms.
fn to_declared(array: ArrayRef, declared: &DataType) -> Result<ArrayRef> {
    Ok(match (array.data_type(), declared) {
        (a, d) if a == d => array,
        (DataType::Timestamp(..), DataType::Int64) => {
            let millis = cast(&array, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
            cast(&millis, &DataType::Int64)?
        }
        _ => cast(&array, declared)?,
    })
}

impl ScalarUDFImpl for HostUdf {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(self.ret.clone())
    }
    fn coerce_types(&self, actual: &[DataType]) -> Result<Vec<DataType>> {
        let n = self.args.len();
        if actual.len() != n && actual.len() != n + LINEAGE_ARGS {
            return plan_err!("{} takes {n} arguments, got {}", self.name, actual.len());
        }
        let mut types: Vec<DataType> =
            actual.iter().zip(&self.args).enumerate().map(|(i, (a, d))| coerce(&self.name, i, a, d)).collect::<Result<_>>()?;
        types.extend(actual[n..].iter().cloned());
        Ok(types)
    }
    fn invoke_with_args(&self, call: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = call.args.iter().any(|a| matches!(a, ColumnarValue::Array(_)));
        let n = if rows { call.number_rows } else { 1 };
        let values = call.args[..self.args.len()]
            .iter()
            .zip(&self.args)
            .map(|(a, t)| to_declared(a.to_array(n)?, t))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let lineage = call.args[self.args.len()..].iter().map(|a| a.to_array(n)).collect::<Result<Vec<ArrayRef>>>()?;
        let out = call_tolerant(&self.loaded, &values, &self.ret, |row| {
            metrics::counter!("notiflow_udf_errors_total", "udf" => self.name.clone()).increment(1);
            let origin = match lineage.as_slice() {
                [s, p, o] if s.is_valid(row) && p.is_valid(row) && o.is_valid(row) => Some((
                    s.as_primitive::<Int32Type>().value(row),
                    p.as_primitive::<Int32Type>().value(row),
                    o.as_primitive::<Int64Type>().value(row),
                )),
                _ => None,
            };
            self.failures.push(UdfFailure { udf: self.name.clone(), reason: self.dead_letter_reason.clone(), origin });
        })?;
        Ok(if rows { ColumnarValue::Array(out) } else { ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?) })
    }
}

/// Loads a built scalar UDF as a DataFusion function.
pub fn load(udf: &UdfSource, failures: &UdfFailures) -> std::result::Result<ScalarUDF, String> {
    let loaded = open(udf)?;
    Ok(ScalarUDF::new_from_impl(HostUdf {
        name: udf.name.clone(),
        library: udf.library.clone(),
        args: udf.args.iter().map(|a| a.data_type.clone()).collect(),
        ret: udf.ret.data_type.clone(),
        signature: Signature::user_defined(Volatility::Immutable),
        loaded,
        failures: failures.clone(),
        dead_letter_reason: udf.dead_letter_reason.clone(),
    }))
}

/// Loads a built aggregate UDF: its accumulator keeps the group's values and
/// calls the UDF once with all of them when the window closes.
pub fn load_aggregate(udf: &UdfSource) -> std::result::Result<AggregateUDF, String> {
    let loaded = open(udf)?;
    let [arg] = udf.args.as_slice() else {
        return Err(format!("{}: an aggregate UDF takes one Vec<T> argument", udf.name));
    };
    let element = arg.data_type.clone();
    let list = DataType::List(Arc::new(Field::new("item", element.clone(), true)));
    let ret = udf.ret.data_type.clone();
    let name = udf.name.clone();
    Ok(create_udaf(
        &udf.name,
        vec![element.clone()],
        Arc::new(ret.clone()),
        Volatility::Immutable,
        Arc::new(move |_| {
            Ok(Box::new(CollectingAccumulator {
                name: name.clone(),
                element: element.clone(),
                ret: ret.clone(),
                loaded: loaded.clone(),
                values: vec![],
            }) as Box<dyn Accumulator>)
        }),
        Arc::new(vec![list]),
    ))
}

/// Collects a group's non-null values for an aggregate UDF.
struct CollectingAccumulator {
    name: String,
    element: DataType,
    ret: DataType,
    loaded: Arc<Loaded>,
    values: Vec<ArrayRef>,
}

impl std::fmt::Debug for CollectingAccumulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectingAccumulator").field("udf", &self.name).finish()
    }
}

impl CollectingAccumulator {
    fn all(&self) -> Result<ArrayRef> {
        if self.values.is_empty() {
            return Ok(arrow::array::new_empty_array(&self.element));
        }
        let refs: Vec<&dyn Array> = self.values.iter().map(|a| a.as_ref()).collect();
        Ok(concat(&refs)?)
    }

    fn keep(&mut self, values: &ArrayRef) -> Result<()> {
        let values = arrow::compute::filter(values, &arrow::compute::is_not_null(values)?)?;
        if !values.is_empty() {
            self.values.push(cast(&values, &self.element)?);
        }
        Ok(())
    }
}

impl Accumulator for CollectingAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.keep(&values[0])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists: &ListArray = states[0].as_list::<i32>();
        for list in lists.iter().flatten() {
            self.keep(&list)?;
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let all = self.all()?;
        Ok(vec![ScalarValue::List(Arc::new(arrow::array::ListArray::new(
            Arc::new(Field::new("item", self.element.clone(), true)),
            arrow::buffer::OffsetBuffer::from_lengths([all.len()]),
            all,
            None,
        )))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let all = self.all()?;
        match call(&self.loaded, &[all])? {
            Some(out) if out.len() == 1 => ScalarValue::try_from_array(&cast(&out, &self.ret)?, 0),
            _ => {
                metrics::counter!("notiflow_udf_errors_total", "udf" => self.name.clone()).increment(1);
                ScalarValue::try_from(&self.ret)
            }
        }
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.values.iter().map(|a| a.get_array_memory_size()).sum::<usize>()
    }
}

/// One call; on failure, row by row: failing rows become null and are
/// reported to `failed(row)`.
fn call_tolerant(loaded: &Loaded, args: &[ArrayRef], ret: &DataType, mut failed: impl FnMut(usize)) -> Result<ArrayRef> {
    let n = args[0].len();
    if n == 0 {
        return Ok(arrow::array::new_empty_array(ret));
    }
    if let Some(out) = call(loaded, args)? {
        return Ok(out);
    }
    let mut pieces = Vec::with_capacity(n);
    for row in 0..n {
        let slice: Vec<ArrayRef> = args.iter().map(|a| a.slice(row, 1)).collect();
        match call(loaded, &slice)? {
            Some(value) => pieces.push(value),
            None => {
                failed(row);
                pieces.push(new_null_array(ret, 1));
            }
        }
    }
    let refs: Vec<&dyn Array> = pieces.iter().map(|a| a.as_ref()).collect();
    Ok(concat(&refs)?)
}

/// Moves the argument vector into memory from the system allocator: the UDF
/// takes ownership of it and frees it with its own allocator, the system's,
/// whatever this process's global allocator is (the binary uses mimalloc).
fn in_system_memory(items: Vec<FfiArraySchema>) -> (*mut FfiArraySchema, usize, usize) {
    use std::alloc::{GlobalAlloc, Layout, System, handle_alloc_error};
    let len = items.len();
    let capacity = len.max(1);
    let layout = Layout::array::<FfiArraySchema>(capacity).expect("a few arguments fit in memory");
    // SAFETY: the layout has a non-zero size (capacity >= 1).
    let ptr = unsafe { System.alloc(layout) }.cast::<FfiArraySchema>();
    if ptr.is_null() {
        handle_alloc_error(layout);
    }
    for (i, item) in items.into_iter().enumerate() {
        // SAFETY: `ptr` has room for `capacity >= len` items; each slot is written once.
        unsafe { ptr.add(i).write(item) };
    }
    (ptr, len, capacity)
}

/// Calls `__run` once; `None` when the UDF reported an error (it panicked).
fn call(loaded: &Loaded, args: &[ArrayRef]) -> Result<Option<ArrayRef>> {
    let mut ffi = Vec::with_capacity(args.len());
    for array in args {
        let (array, schema) = to_ffi(&array.to_data())?;
        ffi.push(FfiArraySchema(array, schema));
    }
    let (ptr, len, capacity) = in_system_memory(ffi);
    // SAFETY: `__run` has arroyo-udf-common 0.2's signature; arguments are valid C Data Interface arrays.
    match unsafe { (loaded.run)(FfiArrays { ptr, len, capacity, error: false }) } {
        RunResult::Ok(FfiArraySchema(array, schema)) => {
            // SAFETY: the UDF returned a valid exported array and its schema.
            let data = unsafe { from_ffi(array, &schema) }.map_err(|e| DataFusionError::External(Box::new(e)))?;
            Ok(Some(make_array(data)))
        }
        RunResult::Err => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_signatures_like_arroyo() {
        let udf = parse_signature("/*\n[dependencies]\n*/\nuse x;\n#[udf]\nfn normalize_phone(number: &str, region: Option<&str>) -> Option<String> {\n}").unwrap();
        assert_eq!(udf.name, "normalize_phone");
        assert_eq!(udf.args, vec![UdfType { data_type: DataType::Utf8, nullable: false }, UdfType { data_type: DataType::Utf8, nullable: true }]);
        assert_eq!(udf.ret, UdfType { data_type: DataType::Utf8, nullable: true });
        assert!(!udf.aggregate);
        let udaf = parse_signature("#[udf]\nfn p95(mut values: Vec<f64>) -> Option<f64> {}").unwrap();
        assert!(udaf.aggregate);
        assert_eq!(udaf.args, vec![UdfType { data_type: DataType::Float64, nullable: false }]);
        assert!(!parse_signature("#[udf]\nfn f(b: Vec<u8>) -> i64 {}").unwrap().aggregate, "Vec<u8> is binary");
        assert!(parse_signature("#[udf]\nfn f(x: HashMap<u8, u8>) -> i64 {}").unwrap_err().contains("not supported"));
        assert!(parse_signature("#[udf]\nfn f() -> i64 {}").unwrap_err().contains("at least one"));
    }

    #[test]
    fn a_udf_may_name_its_dead_letter_reason() {
        assert_eq!(dead_letter_reason("#[udf]\nfn f(x: i64) -> i64 {}").unwrap(), "udf_error");
        assert_eq!(dead_letter_reason("// notiflow: dead_letter_reason = template_error\n").unwrap(), "template_error");
        assert!(dead_letter_reason("// notiflow: dead_letter_reason = Bad Reason\n").is_err());
    }

    #[test]
    fn the_dependencies_header_must_match_the_manifest() {
        let manifest = "[package]\nname = \"x\"\n[dependencies]\narroyo-udf-plugin.workspace = true\nchrono-tz = \"0.10\"\n";
        assert!(check_dependencies("/*\n[dependencies]\nchrono-tz = \"0.10\"\n*/\nfn f() {}", manifest).is_ok());
        let drift = check_dependencies("/*\n[dependencies]\nchrono-tz = \"0.9\"\n*/", manifest).unwrap_err();
        assert!(drift.contains("chrono-tz = \"0.9\"") && drift.contains("chrono-tz = \"0.10\""), "{drift}");
        assert!(check_dependencies("/*\n[dependencies]\n*/", manifest).unwrap_err().contains("lists nothing"));
        assert!(check_dependencies("use x;", manifest).unwrap_err().contains("header"));
    }

    #[test]
    fn timestamps_cross_as_epoch_millis() {
        let ts: ArrayRef = Arc::new(arrow::array::TimestampNanosecondArray::from(vec![Some(1_500_000_000), None]));
        let out = to_declared(ts, &DataType::Int64).unwrap();
        assert_eq!(out.as_primitive::<Int64Type>().iter().collect::<Vec<_>>(), vec![Some(1500), None]);
        assert_eq!(coerce("f", 0, &DataType::Timestamp(TimeUnit::Second, None), &DataType::Int64).unwrap(), DataType::Timestamp(TimeUnit::Second, None));
        assert!(coerce("f", 1, &DataType::Timestamp(TimeUnit::Second, None), &DataType::Utf8).unwrap_err().to_string().contains("argument 2"));
    }
}
