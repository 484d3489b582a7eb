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
//! Arroyo reads them. A UDF that fails on a batch is retried row by row; rows
//! that still fail become null and are counted (`notiflow_udf_errors_total`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, make_array, new_null_array};
use arrow::compute::{cast, concat};
use arrow::datatypes::DataType;
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi, to_ffi};
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};

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
    pub args: Vec<UdfType>,
    pub ret: UdfType,
    pub library: PathBuf,
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
        let (name, args, ret) = parse_signature(&source).map_err(|e| format!("{}: {e}", source_path.display()))?;
        found.push(UdfSource { library: lib_dir.join(format!("lib{name}.so")), name, args, ret });
    }
    Ok(found)
}

/// `#[udf] fn name(a: T, b: Option<U>) -> R` (Arroyo's supported types).
fn parse_signature(source: &str) -> std::result::Result<(String, Vec<UdfType>, UdfType), String> {
    let after = source.split("#[udf]").nth(1).ok_or("no #[udf] function")?;
    let after = after.trim_start();
    let after = after.strip_prefix("pub ").unwrap_or(after);
    let after = after.strip_prefix("fn ").ok_or("#[udf] must be followed by `fn`")?;
    let open = after.find('(').ok_or("no argument list")?;
    let name = after[..open].trim().to_string();
    let close = after.find(')').ok_or("no argument list end")?;
    let args = after[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| a.split_once(':').map(|(_, t)| rust_type(t.trim())).ok_or_else(|| format!("argument `{a}` has no type"))?)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let rest = &after[close + 1..];
    let ret = rest.split('{').next().unwrap_or_default().trim();
    let ret = ret.strip_prefix("->").ok_or("the UDF must return a value")?.trim();
    if args.is_empty() {
        return Err("a UDF takes at least one argument".into());
    }
    Ok((name, args, rust_type(ret)?))
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
        other => return Err(format!("type `{other}` is not supported by arroyo-udf-plugin scalar UDFs")),
    };
    Ok(UdfType { data_type, nullable: false })
}

/// A loaded UDF library. Arrays it returned are freed by its code, so it
/// stays loaded for the life of the process.
struct Loaded {
    _library: libloading::Library,
    run: RunFn,
}

/// Loads a built UDF and wraps it as a DataFusion scalar function.
pub fn load(udf: &UdfSource) -> std::result::Result<ScalarUDF, String> {
    // SAFETY: the library is a UDF built from this repository's udfs/ workspace.
    let library = unsafe { libloading::Library::new(&udf.library) }.map_err(|e| format!("{}: {e}", udf.library.display()))?;
    let run: RunFn = *unsafe { library.get::<RunFn>(b"__run\0") }.map_err(|e| format!("{}: no __run symbol: {e}", udf.library.display()))?;
    let loaded = Arc::new(Loaded { _library: library, run });
    // Libraries are never unloaded: results' buffers are freed by their code.
    std::mem::forget(loaded.clone());
    let name = udf.name.clone();
    let arg_types: Vec<DataType> = udf.args.iter().map(|a| a.data_type.clone()).collect();
    let ret = udf.ret.data_type.clone();
    let ret_for_call = ret.clone();
    Ok(create_udf(
        &udf.name,
        arg_types.clone(),
        ret,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let rows = args.iter().find_map(|a| match a {
                ColumnarValue::Array(a) => Some(a.len()),
                ColumnarValue::Scalar(_) => None,
            });
            let n = rows.unwrap_or(1);
            let arrays = args
                .iter()
                .zip(&arg_types)
                .map(|(a, t)| {
                    let array = a.to_array(n)?;
                    // Only the declared types cross: arrow 51 cannot import e.g. Utf8View.
                    Ok(if array.data_type() == t { array } else { cast(&array, t)? })
                })
                .collect::<Result<Vec<ArrayRef>>>()?;
            let out = call_tolerant(&loaded, &name, &arrays, &ret_for_call)?;
            Ok(match rows {
                Some(_) => ColumnarValue::Array(out),
                None => ColumnarValue::Scalar(datafusion::common::ScalarValue::try_from_array(&out, 0)?),
            })
        }),
    ))
}

/// One call; on failure, row by row with failing rows as null.
fn call_tolerant(loaded: &Loaded, name: &str, args: &[ArrayRef], ret: &DataType) -> Result<ArrayRef> {
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
                metrics::counter!("notiflow_udf_errors_total", "udf" => name.to_string()).increment(1);
                pieces.push(new_null_array(ret, 1));
            }
        }
    }
    let refs: Vec<&dyn Array> = pieces.iter().map(|a| a.as_ref()).collect();
    Ok(concat(&refs)?)
}

/// Calls `__run` once; `None` when the UDF reported an error (it panicked).
fn call(loaded: &Loaded, args: &[ArrayRef]) -> Result<Option<ArrayRef>> {
    let mut ffi = Vec::with_capacity(args.len());
    for array in args {
        let (array, schema) = to_ffi(&array.to_data())?;
        ffi.push(FfiArraySchema(array, schema));
    }
    // The UDF takes ownership of the argument vector and frees it with the
    // system allocator, which is also this process's allocator.
    let (len, capacity) = (ffi.len(), ffi.capacity());
    let ptr = ffi.leak().as_mut_ptr();
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
        let (name, args, ret) = parse_signature("/*\n[dependencies]\n*/\nuse x;\n#[udf]\nfn normalize_phone(number: &str, region: Option<&str>) -> Option<String> {\n}").unwrap();
        assert_eq!(name, "normalize_phone");
        assert_eq!(args, vec![UdfType { data_type: DataType::Utf8, nullable: false }, UdfType { data_type: DataType::Utf8, nullable: true }]);
        assert_eq!(ret, UdfType { data_type: DataType::Utf8, nullable: true });
        assert!(parse_signature("#[udf]\nfn f(x: HashMap<u8, u8>) -> i64 {}").unwrap_err().contains("not supported"));
        assert!(parse_signature("#[udf]\nfn f() -> i64 {}").unwrap_err().contains("at least one"));
    }
}
