use crate::prelude::*;
use pgrx::pg_sys::Oid;
use pgrx::{
    FromDatum, PgBuiltInOids, PgOid,
    datum::{Array, Date, JsonB, Timestamp},
    is_a,
    list::List,
    pg_sys,
    pg_sys::Datum,
};
use std::ffi::CStr;
use std::ffi::c_void;
use std::os::raw::c_int;
use std::ptr;
use std::sync::Mutex;

use crate::interface::Param;

// create array of Cell from constant datum array
pub(crate) unsafe fn form_array_from_datum(
    datum: Datum,
    is_null: bool,
    typoid: pg_sys::Oid,
) -> Option<Vec<Cell>> {
    let oid = PgOid::from(typoid);
    match oid {
        PgOid::BuiltIn(PgBuiltInOids::BOOLARRAYOID) => {
            unsafe { Array::<bool>::from_polymorphic_datum(datum, is_null, pg_sys::BOOLOID) }.map(
                |arr| {
                    arr.iter()
                        .filter(|v| v.is_some())
                        .map(|v| Cell::Bool(v.expect("non-null array element")))
                        .collect::<Vec<_>>()
                },
            )
        }
        PgOid::BuiltIn(PgBuiltInOids::CHARARRAYOID) => {
            unsafe { Array::<i8>::from_polymorphic_datum(datum, is_null, pg_sys::CHAROID) }.map(
                |arr| {
                    arr.iter()
                        .filter(|v| v.is_some())
                        .map(|v| Cell::I8(v.expect("non-null array element")))
                        .collect::<Vec<_>>()
                },
            )
        }
        PgOid::BuiltIn(PgBuiltInOids::INT2ARRAYOID) => {
            unsafe { Array::<i16>::from_polymorphic_datum(datum, is_null, pg_sys::INT2OID) }.map(
                |arr| {
                    arr.iter()
                        .filter(|v| v.is_some())
                        .map(|v| Cell::I16(v.expect("non-null array element")))
                        .collect::<Vec<_>>()
                },
            )
        }
        PgOid::BuiltIn(PgBuiltInOids::FLOAT4ARRAYOID) => {
            unsafe { Array::<f32>::from_polymorphic_datum(datum, is_null, pg_sys::FLOAT4OID) }.map(
                |arr| {
                    arr.iter()
                        .filter(|v| v.is_some())
                        .map(|v| Cell::F32(v.expect("non-null array element")))
                        .collect::<Vec<_>>()
                },
            )
        }
        PgOid::BuiltIn(PgBuiltInOids::INT4ARRAYOID) => {
            unsafe { Array::<i32>::from_polymorphic_datum(datum, is_null, pg_sys::INT4OID) }.map(
                |arr| {
                    arr.iter()
                        .filter(|v| v.is_some())
                        .map(|v| Cell::I32(v.expect("non-null array element")))
                        .collect::<Vec<_>>()
                },
            )
        }
        PgOid::BuiltIn(PgBuiltInOids::FLOAT8ARRAYOID) => {
            unsafe { Array::<f64>::from_polymorphic_datum(datum, is_null, pg_sys::FLOAT8OID) }.map(
                |arr| {
                    arr.iter()
                        .filter(|v| v.is_some())
                        .map(|v| Cell::F64(v.expect("non-null array element")))
                        .collect::<Vec<_>>()
                },
            )
        }
        PgOid::BuiltIn(PgBuiltInOids::INT8ARRAYOID) => {
            unsafe { Array::<i64>::from_polymorphic_datum(datum, is_null, pg_sys::INT8OID) }.map(
                |arr| {
                    arr.iter()
                        .filter(|v| v.is_some())
                        .map(|v| Cell::I64(v.expect("non-null array element")))
                        .collect::<Vec<_>>()
                },
            )
        }
        PgOid::BuiltIn(PgBuiltInOids::TEXTARRAYOID) => {
            unsafe { Array::<String>::from_polymorphic_datum(datum, is_null, pg_sys::TEXTOID) }.map(
                |arr| {
                    arr.iter()
                        .filter(|v| v.is_some())
                        .map(|v| Cell::String(v.expect("non-null array element")))
                        .collect::<Vec<_>>()
                },
            )
        }
        PgOid::BuiltIn(PgBuiltInOids::DATEARRAYOID) => {
            unsafe { Array::<Date>::from_polymorphic_datum(datum, is_null, pg_sys::DATEOID) }.map(
                |arr| {
                    arr.iter()
                        .filter(|v| v.is_some())
                        .map(|v| Cell::Date(v.expect("non-null array element")))
                        .collect::<Vec<_>>()
                },
            )
        }
        PgOid::BuiltIn(PgBuiltInOids::TIMESTAMPARRAYOID) => unsafe {
            Array::<Timestamp>::from_polymorphic_datum(datum, is_null, pg_sys::TIMESTAMPOID)
        }
        .map(|arr| {
            arr.iter()
                .filter(|v| v.is_some())
                .map(|v| Cell::Timestamp(v.expect("non-null array element")))
                .collect::<Vec<_>>()
        }),
        PgOid::BuiltIn(PgBuiltInOids::JSONBARRAYOID) => {
            unsafe { Array::<JsonB>::from_polymorphic_datum(datum, is_null, pg_sys::JSONBOID) }.map(
                |arr| {
                    arr.iter()
                        .filter(|v| v.is_some())
                        .map(|v| Cell::Json(v.expect("non-null array element")))
                        .collect::<Vec<_>>()
                },
            )
        }
        _ => None,
    }
}

pub(crate) unsafe fn get_operator(opno: pg_sys::Oid) -> pg_sys::Form_pg_operator {
    unsafe {
        let htup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::OPEROID.try_into().unwrap(),
            opno.into(),
        );
        if htup.is_null() {
            pg_sys::ReleaseSysCache(htup);
            pgrx::error!("cache lookup operator {:?} failed", opno);
        }
        let op = pg_sys::GETSTRUCT(htup) as pg_sys::Form_pg_operator;
        pg_sys::ReleaseSysCache(htup);
        op
    }
}

pub(crate) unsafe fn unnest_clause(node: *mut pg_sys::Node) -> *mut pg_sys::Node {
    unsafe {
        if is_a(node, pg_sys::NodeTag::T_RelabelType) {
            (*(node as *mut pg_sys::RelabelType)).arg as _
        } else if is_a(node, pg_sys::NodeTag::T_ArrayCoerceExpr) {
            (*(node as *mut pg_sys::ArrayCoerceExpr)).arg as _
        } else {
            node
        }
    }
}

/// Reports a condition the framework keeps for local evaluation (DEBUG1 only:
/// Postgres rechecks it, nothing is wrong).
fn report_kept_local(msg: &str) {
    pgrx::debug1!("Wrappers: kept for local evaluation: {msg}");
}

/// An expression whose value cannot change during a scan: no column of any
/// relation, no volatile function, no subquery, no aggregate or set-returning
/// function. Such an expression is evaluated once when the scan starts.
pub(crate) unsafe fn is_constant_during_scan(node: *mut pg_sys::Node) -> bool {
    unsafe {
        !node.is_null()
            && !pg_sys::contain_var_clause(node)
            && !pg_sys::contain_volatile_functions(node)
            && !pg_sys::contain_subplans(node)
            && !pg_sys::contain_agg_clause(node)
            && !pg_sys::expression_returns_set(node)
    }
}

/// The SQL text of an expression, for EXPLAIN.
pub(crate) unsafe fn deparse(node: *mut pg_sys::Node, relid: pg_sys::Oid) -> String {
    unsafe {
        let relname = pg_sys::get_rel_name(relid);
        if relname.is_null() {
            return "?".to_string();
        }
        let ctx = pg_sys::deparse_context_for(relname, relid);
        let text = pg_sys::deparse_expression(node, ctx, false, false);
        if text.is_null() { "?".to_string() } else { CStr::from_ptr(text).to_string_lossy().into_owned() }
    }
}

pub(crate) unsafe fn extract_from_op_expr(
    root: *mut pg_sys::PlannerInfo,
    baserel_id: pg_sys::Oid,
    baserel_ids: pg_sys::Relids,
    expr: *mut pg_sys::OpExpr,
) -> Option<Qual> {
    unsafe { extract_op(root, baserel_id, baserel_ids, expr, false) }
}

/// `column op <expression of other relations>` of a join clause: the expression
/// becomes a parameter (Postgres turns it into a nestloop parameter of the
/// parameterized scan).
unsafe fn is_outer_value(root: *mut pg_sys::PlannerInfo, node: *mut pg_sys::Node, baserel_ids: pg_sys::Relids) -> bool {
    unsafe {
        !node.is_null()
            && !pg_sys::bms_overlap(pg_sys::pull_varnos(root, node), baserel_ids)
            && !pg_sys::contain_volatile_functions(node)
            && !pg_sys::contain_subplans(node)
            && !pg_sys::contain_agg_clause(node)
            && !pg_sys::expression_returns_set(node)
    }
}

unsafe fn extract_op(
    root: *mut pg_sys::PlannerInfo,
    baserel_id: pg_sys::Oid,
    baserel_ids: pg_sys::Relids,
    expr: *mut pg_sys::OpExpr,
    outer: bool,
) -> Option<Qual> {
    unsafe {
        pgrx::memcx::current_context(|mcx| {
            if let Some(args) = List::<*mut c_void>::downcast_ptr_in_memcx((*expr).args, mcx) {
                // only deal with binary operator
                if args.len() != 2 {
                    report_kept_local("only binary operator expressions are pushed");
                    return None;
                }

                // get operator
                let opno = (*expr).opno;
                let opr = get_operator(opno);
                if opr.is_null() {
                    report_kept_local("operator is empty");
                    return None;
                }

                let mut left = unnest_clause(*args.get(0).unwrap() as _);
                let mut right = unnest_clause(*args.get(1).unwrap() as _);

                // swap operands if needed: the column of this relation goes left
                let ours = |n: *mut pg_sys::Node| {
                    is_a(n, pg_sys::NodeTag::T_Var)
                        && pg_sys::bms_is_member((*(n as *mut pg_sys::Var)).varno as c_int, baserel_ids)
                };
                let mut opr = opr;
                if ours(right) && !ours(left) && (*opr).oprcom != Oid::INVALID {
                    std::mem::swap(&mut left, &mut right);
                    // `value < column` is `column > value`: the commutator's name
                    let commutator = get_operator((*opr).oprcom);
                    if commutator.is_null() {
                        return None;
                    }
                    opr = commutator;
                }

                if is_a(left, pg_sys::NodeTag::T_Var) {
                    let left = left as *mut pg_sys::Var;

                    if pg_sys::bms_is_member((*left).varno as c_int, baserel_ids)
                        && (*left).varattno >= 1
                    {
                        let field = pg_sys::get_attname(baserel_id, (*left).varattno, false);

                        let (value, param) = if is_a(right, pg_sys::NodeTag::T_Const) {
                            let right = right as *mut pg_sys::Const;
                            (
                                Cell::from_polymorphic_datum(
                                    (*right).constvalue,
                                    (*right).constisnull,
                                    (*right).consttype,
                                ),
                                None,
                            )
                        } else if is_a(right, pg_sys::NodeTag::T_Param) {
                            // add a dummy value if this is query parameter, the actual value
                            // will be extracted from execution state
                            let node = right;
                            let right = right as *mut pg_sys::Param;
                            let exec = (*right).paramkind == pg_sys::ParamKind::PARAM_EXEC;
                            let param = Param {
                                kind: (*right).paramkind,
                                id: (*right).paramid as _,
                                type_oid: (*right).paramtype,
                                eval_value: Mutex::new(None).into(),
                                label: if exec {
                                    deparse(node, baserel_id)
                                } else {
                                    format!("${}", (*right).paramid)
                                },
                                expr_eval: ExprEval::new(if exec { right as _ } else { ptr::null_mut() }),
                            };
                            (Some(Cell::I64(0)), Some(param))
                        } else if outer && is_outer_value(root, right, baserel_ids) {
                            let param = Param {
                                kind: pg_sys::ParamKind::PARAM_EXEC,
                                id: 0,
                                type_oid: pg_sys::exprType(right),
                                eval_value: Mutex::new(None).into(),
                                label: "value from the outer relation".to_string(),
                                expr_eval: ExprEval::new(right as _),
                            };
                            (Some(Cell::I64(0)), Some(param))
                        } else if is_constant_during_scan(right) {
                            // a stable expression (now() - interval '7 days', current_date - 30):
                            // evaluated when the scan starts, like a parameter
                            let param = Param {
                                kind: pg_sys::ParamKind::PARAM_EXEC,
                                id: 0,
                                type_oid: pg_sys::exprType(right),
                                eval_value: Mutex::new(None).into(),
                                label: deparse(right, baserel_id),
                                expr_eval: ExprEval::new(right as _),
                            };
                            (Some(Cell::I64(0)), Some(param))
                        } else {
                            (None, None)
                        };

                        if let Some(value) = value {
                            let qual = Qual {
                                field: CStr::from_ptr(field).to_str().unwrap().to_string(),
                                operator: pgrx::name_data_to_str(&(*opr).oprname).to_string(),
                                value: Value::Cell(value),
                                use_or: false,
                                param,
                            };
                            return Some(qual);
                        }
                    }
                }

                if !outer {
                    report_kept_local(&format!("operator expression ({})", deparse(expr as _, baserel_id)));
                }
            }

            None
        })
    }
}

pub(crate) unsafe fn extract_from_null_test(
    baserel_id: pg_sys::Oid,
    expr: *mut pg_sys::NullTest,
) -> Option<Qual> {
    unsafe {
        let var = (*expr).arg as *mut pg_sys::Var;
        if !is_a(var as _, pg_sys::NodeTag::T_Var) || (*var).varattno < 1 {
            return None;
        }

        let field = pg_sys::get_attname(baserel_id, (*var).varattno, false);

        let opname = if (*expr).nulltesttype == pg_sys::NullTestType::IS_NULL {
            "is".to_string()
        } else {
            "is not".to_string()
        };

        let qual = Qual {
            field: CStr::from_ptr(field).to_str().unwrap().to_string(),
            operator: opname,
            value: Value::Cell(Cell::String("null".to_string())),
            use_or: false,
            param: None,
        };

        Some(qual)
    }
}

pub(crate) unsafe fn extract_from_scalar_array_op_expr(
    _root: *mut pg_sys::PlannerInfo,
    baserel_id: pg_sys::Oid,
    baserel_ids: pg_sys::Relids,
    expr: *mut pg_sys::ScalarArrayOpExpr,
) -> Option<Qual> {
    unsafe {
        pgrx::memcx::current_context(|mcx| {
            if let Some(args) = List::<*mut c_void>::downcast_ptr_in_memcx((*expr).args, mcx) {
                // only deal with binary operator
                if args.len() != 2 {
                    return None;
                }

                // get operator
                let opno = (*expr).opno;
                let opr = get_operator(opno);
                if opr.is_null() {
                    return None;
                }

                let left = unnest_clause(*args.get(0).unwrap() as _);
                let right = unnest_clause(*args.get(1).unwrap() as _);

                if is_a(left, pg_sys::NodeTag::T_Var) && is_a(right, pg_sys::NodeTag::T_Const) {
                    let left = left as *mut pg_sys::Var;
                    let right = right as *mut pg_sys::Const;

                    if pg_sys::bms_is_member((*left).varno as c_int, baserel_ids)
                        && (*left).varattno >= 1
                    {
                        let field = pg_sys::get_attname(baserel_id, (*left).varattno, false);

                        let value: Option<Vec<Cell>> = form_array_from_datum(
                            (*right).constvalue,
                            (*right).constisnull,
                            (*right).consttype,
                        );
                        if let Some(value) = value {
                            let qual = Qual {
                                field: CStr::from_ptr(field).to_str().unwrap().to_string(),
                                operator: pgrx::name_data_to_str(&(*opr).oprname).to_string(),
                                value: Value::Array(value),
                                use_or: (*expr).useOr,
                                param: None,
                            };
                            return Some(qual);
                        }
                    }
                }

                report_kept_local("a scalar array operation whose array is not a constant");
            }

            None
        })
    }
}

pub(crate) unsafe fn extract_from_var(
    _root: *mut pg_sys::PlannerInfo,
    baserel_id: pg_sys::Oid,
    baserel_ids: pg_sys::Relids,
    var: *mut pg_sys::Var,
) -> Option<Qual> {
    unsafe {
        if (*var).varattno < 1
            || (*var).vartype != pg_sys::BOOLOID
            || !pg_sys::bms_is_member((*var).varno as c_int, baserel_ids)
        {
            return None;
        }

        let field = pg_sys::get_attname(baserel_id, (*var).varattno, false);

        let qual = Qual {
            field: CStr::from_ptr(field).to_str().unwrap().to_string(),
            operator: "=".to_string(),
            value: Value::Cell(Cell::Bool(true)),
            use_or: false,
            param: None,
        };

        Some(qual)
    }
}

pub(crate) unsafe fn extract_from_bool_expr(
    _root: *mut pg_sys::PlannerInfo,
    baserel_id: pg_sys::Oid,
    baserel_ids: pg_sys::Relids,
    expr: *mut pg_sys::BoolExpr,
) -> Option<Qual> {
    unsafe {
        pgrx::memcx::current_context(|mcx| {
            if let Some(args) = List::<*mut c_void>::downcast_ptr_in_memcx((*expr).args, mcx) {
                if (*expr).boolop != pg_sys::BoolExprType::NOT_EXPR || args.len() != 1 {
                    return None;
                }

                let var = *args.get(0).unwrap() as *mut pg_sys::Var;
                if (*var).varattno < 1
                    || (*var).vartype != pg_sys::BOOLOID
                    || !pg_sys::bms_is_member((*var).varno as c_int, baserel_ids)
                {
                    return None;
                }

                let field = pg_sys::get_attname(baserel_id, (*var).varattno, false);

                let qual = Qual {
                    field: CStr::from_ptr(field).to_str().unwrap().to_string(),
                    operator: "=".to_string(),
                    value: Value::Cell(Cell::Bool(false)),
                    use_or: false,
                    param: None,
                };

                return Some(qual);
            }

            None
        })
    }
}

pub(crate) unsafe fn extract_from_boolean_test(
    baserel_id: pg_sys::Oid,
    expr: *mut pg_sys::BooleanTest,
) -> Option<Qual> {
    unsafe {
        let var = (*expr).arg as *mut pg_sys::Var;
        if !is_a(var as _, pg_sys::NodeTag::T_Var) || (*var).varattno < 1 {
            return None;
        }

        let field = pg_sys::get_attname(baserel_id, (*var).varattno, false);

        let (opname, value) = match (*expr).booltesttype {
            pg_sys::BoolTestType::IS_TRUE => ("is".to_string(), true),
            pg_sys::BoolTestType::IS_FALSE => ("is".to_string(), false),
            pg_sys::BoolTestType::IS_NOT_TRUE => ("is not".to_string(), true),
            pg_sys::BoolTestType::IS_NOT_FALSE => ("is not".to_string(), false),
            _ => return None,
        };

        let qual = Qual {
            field: CStr::from_ptr(field).to_str().unwrap().to_string(),
            operator: opname,
            value: Value::Cell(Cell::Bool(value)),
            use_or: false,
            param: None,
        };

        Some(qual)
    }
}

/// Equality join clauses (`column = <other relations>`) among `clauses`
/// (RestrictInfos): the conditions a parameterized scan can push.
pub(crate) unsafe fn extract_join_quals(
    root: *mut pg_sys::PlannerInfo,
    baserel: *mut pg_sys::RelOptInfo,
    baserel_id: pg_sys::Oid,
    clauses: *mut pg_sys::List,
) -> Vec<Qual> {
    unsafe {
        pgrx::memcx::current_context(|mcx| {
            let mut quals = Vec::new();
            if let Some(conds) = List::<*mut c_void>::downcast_ptr_in_memcx(clauses, mcx) {
                for cond in conds.iter() {
                    let expr = (*(*cond as *mut pg_sys::RestrictInfo)).clause as *mut pg_sys::Node;
                    if is_a(expr, pg_sys::NodeTag::T_OpExpr)
                        && let Some(q) = extract_op(root, baserel_id, (*baserel).relids, expr as _, true)
                        && q.operator == "="
                        && q.param.is_some()
                    {
                        quals.push(q);
                    }
                }
            }
            quals
        })
    }
}

pub(crate) unsafe fn extract_quals(
    root: *mut pg_sys::PlannerInfo,
    baserel: *mut pg_sys::RelOptInfo,
    baserel_id: pg_sys::Oid,
) -> Vec<Qual> {
    unsafe {
        pgrx::memcx::current_context(|mcx| {
            let mut quals = Vec::new();

            if let Some(conds) =
                List::<*mut c_void>::downcast_ptr_in_memcx((*baserel).baserestrictinfo, mcx)
            {
                for cond in conds.iter() {
                    let expr = (*(*cond as *mut pg_sys::RestrictInfo)).clause as *mut pg_sys::Node;
                    let extracted = if is_a(expr, pg_sys::NodeTag::T_OpExpr) {
                        extract_from_op_expr(root, baserel_id, (*baserel).relids, expr as _)
                    } else if is_a(expr, pg_sys::NodeTag::T_NullTest) {
                        extract_from_null_test(baserel_id, expr as _)
                    } else if is_a(expr, pg_sys::NodeTag::T_ScalarArrayOpExpr) {
                        extract_from_scalar_array_op_expr(
                            root,
                            baserel_id,
                            (*baserel).relids,
                            expr as _,
                        )
                    } else if is_a(expr, pg_sys::NodeTag::T_Var) {
                        extract_from_var(root, baserel_id, (*baserel).relids, expr as _)
                    } else if is_a(expr, pg_sys::NodeTag::T_BoolExpr) {
                        extract_from_bool_expr(root, baserel_id, (*baserel).relids, expr as _)
                    } else if is_a(expr, pg_sys::NodeTag::T_BooleanTest) {
                        extract_from_boolean_test(baserel_id, expr as _)
                    } else {
                        report_kept_local("a condition of a kind the framework does not extract");
                        None
                    };

                    if let Some(qual) = extracted {
                        quals.push(qual);
                    }
                }
            }

            quals
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(feature = "pg_test", pgrx_embed))]
    use pgrx::IntoDatum;

    #[cfg(all(feature = "pg_test", pgrx_embed))]
    #[test]
    fn test_form_array_from_datum_int4_array() {
        let values = vec![1_i32, 2_i32, 3_i32];
        let datum = values
            .into_datum()
            .expect("int4 array datum should be created");

        let result = unsafe { form_array_from_datum(datum, false, pg_sys::INT4ARRAYOID) };
        let result = result.expect("int4 array should be parsed");

        assert_eq!(result.len(), 3);
        assert!(matches!(result[0], Cell::I32(1)));
        assert!(matches!(result[1], Cell::I32(2)));
        assert!(matches!(result[2], Cell::I32(3)));
    }

    #[test]
    fn test_form_array_from_datum_null_datum_returns_none() {
        let result = unsafe { form_array_from_datum(0.into(), true, pg_sys::INT4ARRAYOID) };
        assert!(result.is_none());
    }

    #[cfg(all(feature = "pg_test", pgrx_embed))]
    #[test]
    fn test_form_array_from_datum_unsupported_oid_returns_none() {
        let values = vec![1_i32, 2_i32];
        let datum = values
            .into_datum()
            .expect("int4 array datum should be created");

        let result = unsafe { form_array_from_datum(datum, false, pg_sys::UUIDARRAYOID) };
        assert!(result.is_none());
    }
}
