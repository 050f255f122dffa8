use pgrx::FromDatum;
use pgrx::{
    IntoDatum, PgSqlErrorCode, debug2,
    memcxt::PgMemoryContexts,
    pg_sys::{Datum, MemoryContext, MemoryContextData, Oid, ParamKind},
    prelude::*,
};
use std::collections::HashMap;
use std::marker::PhantomData;

use pgrx::pg_sys::panic::ErrorReport;
use std::os::raw::c_int;
use std::ptr;

use crate::instance;
use crate::interface::{Aggregate, Cell, Column, Limit, Qual, Row, Sort, Value};
use crate::limit::*;
use crate::memctx;
use crate::options::options_to_hashmap;
use crate::polyfill;
use crate::prelude::ForeignDataWrapper;
use crate::qual::*;
use crate::sort::*;
use crate::utils::{self, ReportableError, SerdeList, report_error};

// Fdw private state for scan
pub(crate) struct FdwState<E: Into<ErrorReport>, W: ForeignDataWrapper<E>> {
    // foreign data wrapper instance
    pub(crate) instance: Option<W>,

    // query conditions
    pub(crate) quals: Vec<Qual>,

    // query target column list
    pub(crate) tgts: Vec<Column>,

    // sort list
    pub(crate) sorts: Vec<Sort>,

    // limit
    pub(crate) limit: Option<Limit>,

    // foreign table options
    pub(crate) opts: HashMap<String, String>,

    // aggregate pushdown
    pub(crate) aggregates: Vec<Aggregate>,
    pub(crate) group_by: Vec<Column>,

    // temporary memory context per foreign table, created under Wrappers root
    // memory context
    tmp_ctx: MemoryContext,

    // query result list
    values: Vec<Datum>,
    nulls: Vec<bool>,
    row: Row,
    // fingerprint of current parameter values to detect rescan changes
    param_fingerprint: String,
    // a planned state: freed with the memory context of its plan (registered once)
    freed_with_plan: bool,
    // an execution state: where the executor's reset callback finds it (null once
    // end_foreign_scan has dropped it), so an aborted scan is dropped too
    exec_slot: *mut *mut std::ffi::c_void,
    _phantom: PhantomData<E>,
}

impl<E: Into<ErrorReport>, W: ForeignDataWrapper<E>> FdwState<E, W> {
    unsafe fn new(foreigntableid: Oid, tmp_ctx: MemoryContext) -> Self {
        Self {
            instance: Some(unsafe { instance::create_fdw_instance_from_table_id(foreigntableid) }),
            quals: Vec::new(),
            tgts: Vec::new(),
            sorts: Vec::new(),
            limit: None,
            opts: HashMap::new(),
            aggregates: Vec::new(),
            group_by: Vec::new(),
            tmp_ctx,
            values: Vec::new(),
            nulls: Vec::new(),
            row: Row::new(),
            param_fingerprint: String::new(),
            freed_with_plan: false,
            exec_slot: ptr::null_mut(),
            _phantom: PhantomData,
        }
    }

    #[inline]
    fn get_rel_size(&mut self) -> Result<(i64, i32), E> {
        if let Some(ref mut instance) = self.instance {
            instance.get_rel_size(
                &self.quals,
                &self.tgts,
                &self.sorts,
                &self.limit,
                &self.opts,
            )
        } else {
            Ok((0, 0))
        }
    }

    #[inline]
    pub(crate) fn is_aggregate_scan(&self) -> bool {
        !self.aggregates.is_empty()
    }

    #[inline]
    fn begin_aggregate_scan(&mut self) -> Result<(), E> {
        if let Some(ref mut instance) = self.instance {
            instance.begin_aggregate_scan(&self.aggregates, &self.group_by, &self.quals, &self.opts)
        } else {
            Ok(())
        }
    }

    #[inline]
    fn begin_scan(&mut self) -> Result<(), E> {
        if let Some(ref mut instance) = self.instance {
            instance.begin_scan(
                &self.quals,
                &self.tgts,
                &self.sorts,
                &self.limit,
                &self.opts,
            )
        } else {
            Ok(())
        }
    }

    #[inline]
    fn iter_scan(&mut self) -> Result<Option<()>, E> {
        if let Some(ref mut instance) = self.instance {
            instance.iter_scan(&mut self.row)
        } else {
            Ok(None)
        }
    }

    #[inline]
    fn re_scan(&mut self) -> Result<(), E> {
        if let Some(ref mut instance) = self.instance {
            instance.re_scan()
        } else {
            Ok(())
        }
    }

    #[inline]
    fn end_scan(&mut self) -> Result<(), E> {
        if let Some(ref mut instance) = self.instance {
            instance.end_scan()
        } else {
            Ok(())
        }
    }
}

impl<E: Into<ErrorReport>, W: ForeignDataWrapper<E>> FdwState<E, W> {
    /// The state of one execution of a planned scan. The planned state stays
    /// with the plan (a cached plan is executed many times), so each execution
    /// works on its own copy, with its own instance and parameter values.
    unsafe fn for_execution(&self) -> Self {
        let ftable_oid: u32 = self
            .opts
            .get("wrappers.ftable_oid")
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        let ftable_oid = Oid::from(ftable_oid);
        let ctx = unsafe { memctx::create_wrappers_memctx(&format!("Wrappers_scan_{}", ftable_oid.to_u32())) };
        let mut state = unsafe { FdwState::<E, W>::new(ftable_oid, ctx) };
        state.quals = self
            .quals
            .iter()
            .map(|q| {
                let mut q = q.clone();
                if let Some(p) = q.param.as_mut() {
                    p.eval_value = std::sync::Arc::new(std::sync::Mutex::new(None));
                    p.expr_eval.expr_state = ptr::null_mut();
                }
                q
            })
            .collect();
        state.tgts = self.tgts.clone();
        state.sorts = self.sorts.clone();
        state.limit = self.limit.clone();
        state.opts = self.opts.clone();
        state.aggregates = self.aggregates.clone();
        state.group_by = self.group_by.clone();
        state
    }
}

/// Drops an execution state that end_foreign_scan did not (the query failed or
/// was cancelled): its instance, and with it whatever threads it reads with.
unsafe extern "C-unwind" fn free_execution_state<E: Into<ErrorReport>, W: ForeignDataWrapper<E>>(
    arg: *mut std::ffi::c_void,
) {
    let slot = arg as *mut *mut std::ffi::c_void;
    unsafe {
        let state = *slot as *mut FdwState<E, W>;
        if !state.is_null() {
            drop_fdw_state(state);
        }
    }
}

/// Frees a planned scan state when the memory context holding its plan goes.
unsafe extern "C-unwind" fn free_planned_state<E: Into<ErrorReport>, W: ForeignDataWrapper<E>>(
    arg: *mut std::ffi::c_void,
) {
    unsafe { drop_fdw_state(arg as *mut FdwState<E, W>) };
}

impl<E: Into<ErrorReport>, W: ForeignDataWrapper<E>> utils::SerdeList for FdwState<E, W> {}

impl<E: Into<ErrorReport>, W: ForeignDataWrapper<E>> Drop for FdwState<E, W> {
    fn drop(&mut self) {
        // drop foreign data wrapper instance
        self.instance.take();

        // remove the allocated memory context
        if !self.tmp_ctx.is_null() {
            unsafe {
                memctx::delete_wrappers_memctx(self.tmp_ctx);
                self.tmp_ctx = ptr::null::<MemoryContextData>() as _;
            }
        }
    }
}

// drop the scan state, so the inner fdw instance can be dropped too
unsafe fn drop_fdw_state<E: Into<ErrorReport>, W: ForeignDataWrapper<E>>(
    fdw_state: *mut FdwState<E, W>,
) {
    // an execution state is dropped once, whichever path comes first (end of
    // scan, an error in iterate or rescan, or the executor's reset callback)
    unsafe {
        let slot = (*fdw_state).exec_slot;
        if !slot.is_null() {
            *slot = ptr::null_mut();
        }
    }
    let boxed_fdw_state = unsafe { Box::from_raw(fdw_state) };
    drop(boxed_fdw_state);
}

#[pg_guard]
pub(super) extern "C-unwind" fn get_foreign_rel_size<
    E: Into<ErrorReport>,
    W: ForeignDataWrapper<E>,
>(
    root: *mut pg_sys::PlannerInfo,
    baserel: *mut pg_sys::RelOptInfo,
    foreigntableid: pg_sys::Oid,
) {
    debug2!("---> get_foreign_rel_size");
    unsafe {
        // create memory context for scan
        let ctx_name = format!("Wrappers_scan_{}", foreigntableid.to_u32());
        let ctx = memctx::create_wrappers_memctx(&ctx_name);

        // create scan state
        let mut state = FdwState::<E, W>::new(foreigntableid, ctx);

        PgMemoryContexts::For(state.tmp_ctx).switch_to(|_| {
            // extract qual list
            state.quals = extract_quals(root, baserel, foreigntableid);

            // extract target column list from target and restriction expression
            state.tgts = utils::extract_target_columns(root, baserel);

            // extract sort list
            state.sorts = extract_sorts(root, baserel, foreigntableid);

            // extract limit
            state.limit = extract_limit(root, baserel, foreigntableid);

            // get foreign table options
            let ftable = pg_sys::GetForeignTable(foreigntableid);
            state.opts = options_to_hashmap((*ftable).options).report_unwrap();

            // add additional metadata to the options
            state.opts.insert(
                "wrappers.fserver_oid".into(),
                (*ftable).serverid.to_u32().to_string(),
            );
            state.opts.insert(
                "wrappers.ftable_oid".into(),
                (*ftable).relid.to_u32().to_string(),
            );
        });

        // get estimate row count and mean row width
        let (rows, width) = state.get_rel_size().report_unwrap();
        (*baserel).rows = rows as f64;
        (*(*baserel).reltarget).width = width;

        // save the state for following callbacks
        (*baserel).fdw_private = Box::leak(Box::new(state)) as *mut FdwState<E, W> as _;
    }
}

#[pg_guard]
pub(super) extern "C-unwind" fn get_foreign_paths<
    E: Into<ErrorReport>,
    W: ForeignDataWrapper<E>,
>(
    root: *mut pg_sys::PlannerInfo,
    baserel: *mut pg_sys::RelOptInfo,
    _foreigntableid: pg_sys::Oid,
) {
    debug2!("---> get_foreign_paths");
    unsafe {
        let state = PgBox::<FdwState<E, W>>::from_pg((*baserel).fdw_private as _);

        // get startup cost from foreign table options
        let startup_cost = state
            .opts
            .get("startup_cost")
            .map(|c| match c.parse::<f64>() {
                Ok(v) => v,
                Err(_) => {
                    pgrx::error!("invalid option startup_cost: {}", c);
                }
            })
            .unwrap_or(0.0);
        let total_cost = startup_cost + (*baserel).rows;

        // create a ForeignPath node and add it as the only possible path
        let path = pg_sys::create_foreignscan_path(
            root,
            baserel,
            ptr::null_mut(), // default pathtarget
            (*baserel).rows,
            #[cfg(feature = "pg18")]
            0, // disabled_nodes
            startup_cost,
            total_cost,
            ptr::null_mut(), // no pathkeys
            ptr::null_mut(), // no outer rel either
            ptr::null_mut(), // no extra plan
            #[cfg(any(feature = "pg17", feature = "pg18"))]
            ptr::null_mut(), // no restrict info
            ptr::null_mut(), // no fdw_private data
        );
        pg_sys::add_path(baserel, &mut ((*path).path));

        // Parameterized paths: for each equality join (an equivalence class or a
        // join clause) on a column the FDW can take from the outer row, a scan
        // that does (a nested loop then makes one filtered scan per outer row
        // instead of reading the whole table).
        let columns = match state.instance.as_ref() {
            Some(instance) => instance.param_columns(&state.opts),
            None => Vec::new(),
        };
        let mut clauses: Vec<*mut pg_sys::RestrictInfo> = Vec::new();
        for name in &columns {
            let Ok(cname) = std::ffi::CString::new(name.as_str()) else { continue };
            let attnum = pg_sys::get_attnum(_foreigntableid, cname.as_ptr());
            if attnum <= 0 {
                continue;
            }
            let mut target = ((*baserel).relid, attnum);
            if (*baserel).has_eclass_joins {
                let derived = pg_sys::generate_implied_equalities_for_column(
                    root,
                    baserel,
                    Some(ec_member_is_column),
                    &mut target as *mut (pg_sys::Index, pg_sys::AttrNumber) as *mut std::ffi::c_void,
                    (*baserel).lateral_referencers,
                );
                let n = if derived.is_null() { 0 } else { (*derived).length as usize };
                for i in 0..n {
                    clauses.push((*(*derived).elements.add(i)).ptr_value as *mut pg_sys::RestrictInfo);
                }
            }
        }
        let joininfo = (*baserel).joininfo;
        let n = if joininfo.is_null() { 0 } else { (*joininfo).length as usize };
        for i in 0..n {
            clauses.push((*(*joininfo).elements.add(i)).ptr_value as *mut pg_sys::RestrictInfo);
        }
        let mut seen: Vec<pg_sys::Relids> = Vec::new();
        for rinfo in clauses {
            if !pg_sys::join_clause_is_movable_to(rinfo, baserel) {
                continue;
            }
            let one = pg_sys::lappend(ptr::null_mut(), rinfo as *mut std::ffi::c_void);
            let quals = extract_join_quals(root, baserel, _foreigntableid, one);
            if !quals.iter().any(|q| columns.contains(&q.field)) {
                continue;
            }
            let required_outer = pg_sys::bms_del_member(
                pg_sys::bms_union((*rinfo).clause_relids, (*baserel).lateral_relids),
                (*baserel).relid as c_int,
            );
            if pg_sys::bms_is_empty(required_outer)
                || seen.iter().any(|r| pg_sys::bms_equal(*r, required_outer))
            {
                continue;
            }
            seen.push(required_outer);
            let ppi = pg_sys::get_baserel_parampathinfo(root, baserel, required_outer);
            if ppi.is_null() {
                continue;
            }
            let rows = (*ppi).ppi_rows.max(1.0);
            let path = pg_sys::create_foreignscan_path(
                root,
                baserel,
                ptr::null_mut(),
                rows,
                #[cfg(feature = "pg18")]
                0,
                startup_cost,
                startup_cost + rows,
                ptr::null_mut(),
                required_outer,
                ptr::null_mut(),
                #[cfg(any(feature = "pg17", feature = "pg18"))]
                ptr::null_mut(),
                ptr::null_mut(),
            );
            pg_sys::add_path(baserel, &mut ((*path).path));
        }
    }
}

/// Whether an equivalence member is the column `arg` points at: (varno, attnum).
unsafe extern "C-unwind" fn ec_member_is_column(
    _root: *mut pg_sys::PlannerInfo,
    _rel: *mut pg_sys::RelOptInfo,
    _ec: *mut pg_sys::EquivalenceClass,
    em: *mut pg_sys::EquivalenceMember,
    arg: *mut std::ffi::c_void,
) -> bool {
    unsafe {
        let (varno, attnum) = *(arg as *const (pg_sys::Index, pg_sys::AttrNumber));
        let mut expr = (*em).em_expr as *mut pg_sys::Node;
        while !expr.is_null() && (*expr).type_ == pg_sys::NodeTag::T_RelabelType {
            expr = (*(expr as *mut pg_sys::RelabelType)).arg as *mut pg_sys::Node;
        }
        !expr.is_null()
            && (*expr).type_ == pg_sys::NodeTag::T_Var
            && (*(expr as *mut pg_sys::Var)).varno as pg_sys::Index == varno
            && (*(expr as *mut pg_sys::Var)).varattno == attnum
    }
}

#[pg_guard]
pub(super) extern "C-unwind" fn get_foreign_plan<E: Into<ErrorReport>, W: ForeignDataWrapper<E>>(
    root: *mut pg_sys::PlannerInfo,
    baserel: *mut pg_sys::RelOptInfo,
    foreigntableid: pg_sys::Oid,
    best_path: *mut pg_sys::ForeignPath,
    tlist: *mut pg_sys::List,
    scan_clauses: *mut pg_sys::List,
    outer_plan: *mut pg_sys::Plan,
) -> *mut pg_sys::ForeignScan {
    debug2!("---> get_foreign_plan");
    unsafe {
        let mut state = PgBox::<FdwState<E, W>>::from_pg((*baserel).fdw_private as _);

        // make foreign scan plan
        let scan_clauses = pg_sys::extract_actual_clauses(scan_clauses, false);

        // Aggregate pushdown: state.aggregates was populated by upper.rs via the
        // shared FdwState pointer (input_rel.fdw_private and output_rel.fdw_private
        // alias the same object). That mutation is visible regardless of which
        // path the planner picked, so it cannot be used as the discriminator —
        // we must key off baserel.reloptkind. When the planner picked the upper
        // aggregate path, baserel IS the upper rel; otherwise we are being called
        // for the base-rel scan path (with a local Aggregate node above us) and
        // must NOT treat this as an aggregate scan.
        let is_agg = (*baserel).reloptkind == pg_sys::RelOptKind::RELOPT_UPPER_REL
            && state.is_aggregate_scan();

        if !is_agg && state.is_aggregate_scan() {
            // Upper-path was registered but the planner chose the base-rel scan
            // (typically because a local HashAgg over a small input was cheaper).
            // Drop the aggregate state so begin_foreign_scan dispatches to
            // begin_scan and the tuple slot is the base-rel's row type.
            state.aggregates = Vec::new();
            state.group_by = Vec::new();
        }

        let (final_tlist, agg_fdw_scan_tlist) = if is_agg {
            // baserel here is the GROUP_AGG upper rel; its reltarget->exprs
            // contains the aggregate outputs (Var nodes for GROUP BY columns
            // and Aggref nodes for the aggregates). Build both the plan tlist
            // and fdw_scan_tlist from it so:
            //   1. final_tlist has the right Aggref/Var nodes for
            //      set_foreignscan_references to rewrite into Var(INDEX_VAR,n).
            //   2. fdw_scan_tlist drives ExecTypeFromTL to a tuple descriptor
            //      whose attribute types match what iter_scan returns —
            //      otherwise heap_form_tuple dereferences a non-pointer Datum
            //      and segfaults.
            let reltarget = (*baserel).reltarget;
            let exprs = (*reltarget).exprs;
            let n = if exprs.is_null() {
                0
            } else {
                (*exprs).length as usize
            };
            let mut agg_tlist: *mut pg_sys::List = ptr::null_mut();
            for i in 0..n {
                let cell = (*exprs).elements.add(i);
                let expr = (*cell).ptr_value as *mut pg_sys::Expr;
                let tle = pg_sys::makeTargetEntry(
                    expr,
                    (i + 1) as pg_sys::AttrNumber,
                    ptr::null_mut(),
                    false,
                );
                // Preserve sortgrouprefs so Sort nodes can identify columns.
                if !(*reltarget).sortgrouprefs.is_null() {
                    (*tle).ressortgroupref = *(*reltarget).sortgrouprefs.add(i);
                }
                agg_tlist = pg_sys::lappend(agg_tlist, tle as *mut std::ffi::c_void);
            }
            let fdw_scan_tlist = pg_sys::list_copy(agg_tlist);

            // Now that we know the upper path is in the plan, project state.tgts
            // to match the aggregate output shape. iterate_foreign_scan uses
            // tgts to map cells returned by the FDW's iter_scan into the
            // correct attribute slots; for aggregate scans this is GROUP BY
            // columns first, then aggregate result columns keyed by alias.
            // We keep this off the base-rel-scan code path so state.tgts (the
            // base-rel scan columns set in get_foreign_rel_size) is preserved
            // when the planner picks the base-rel path.
            let mut new_tgts = Vec::new();
            let mut col_num = 1usize;
            for col in &state.group_by {
                new_tgts.push(Column {
                    name: col.name.clone(),
                    num: col_num,
                    type_oid: col.type_oid,
                });
                col_num += 1;
            }
            for agg in &state.aggregates {
                new_tgts.push(Column {
                    name: agg.alias.clone(),
                    num: col_num,
                    type_oid: agg.type_oid,
                });
                col_num += 1;
            }
            state.tgts = new_tgts;

            (agg_tlist, fdw_scan_tlist)
        } else {
            (tlist, ptr::null_mut())
        };

        // 'serialize' state to list, basically what we're doing here is to store
        // the state pointer as an integer constant in the list, so it can be
        // `deserialized` when executing the plan later.
        // Note that the state itself is not serialized to any memory contexts,
        // it just sits in Rust managed Box'ed memory and will be dropped when
        // end_foreign_scan() is called.
        //
        // A parameterized path also pushes its join clauses: their outer side
        // becomes a parameter (Postgres replaces it by a nestloop parameter).
        let param_info = (*best_path).path.param_info;
        if !param_info.is_null() {
            let join_quals =
                extract_join_quals(root, baserel, foreigntableid, (*param_info).ppi_clauses);
            state.quals.extend(join_quals);
        }
        // The expressions of parameters travel in the plan (fdw_exprs), so a
        // cached plan evaluates its own copies; each param keeps its position.
        let mut fdw_exprs: *mut pg_sys::List = ptr::null_mut();
        let mut next = 0;
        for qual in state.quals.iter_mut() {
            if let Some(param) = qual.param.as_mut()
                && !param.expr_eval.expr.is_null()
            {
                fdw_exprs = pg_sys::lappend(fdw_exprs, param.expr_eval.expr as *mut std::ffi::c_void);
                param.expr_eval.index = next;
                next += 1;
            }
        }
        // the list lives with the plan (copied with it), not in the state's context
        let fdw_private = FdwState::serialize_to_list(state);

        pg_sys::make_foreignscan(
            final_tlist,
            scan_clauses,
            (*baserel).relid,
            fdw_exprs,
            fdw_private as _,
            agg_fdw_scan_tlist,
            ptr::null_mut(),
            outer_plan,
        )
    }
}

#[pg_guard]
pub(super) extern "C-unwind" fn explain_foreign_scan<
    E: Into<ErrorReport>,
    W: ForeignDataWrapper<E>,
>(
    node: *mut pg_sys::ForeignScanState,
    es: *mut pg_sys::ExplainState,
) {
    debug2!("---> explain_foreign_scan");
    unsafe {
        let fdw_state = (*node).fdw_state as *mut FdwState<E, W>;
        if fdw_state.is_null() {
            return;
        }

        let state = &mut *fdw_state;
        let analyze = (*es).analyze;
        let lines = match state.instance.as_mut() {
            Some(instance) => instance
                .explain(&state.quals, &state.tgts, &state.sorts, &state.limit, &state.opts, analyze)
                .report_unwrap(),
            None => Vec::new(),
        };
        let ctx = PgMemoryContexts::For(state.tmp_ctx);
        for (label, value) in lines {
            pg_sys::ExplainPropertyText(ctx.pstrdup(&label), ctx.pstrdup(&value), es);
        }
    }
}

// extract parameter value and assign it to qual in scan state
unsafe fn assign_parameter_value<E: Into<ErrorReport>, W: ForeignDataWrapper<E>>(
    node: *mut pg_sys::ForeignScanState,
    state: &mut FdwState<E, W>,
) {
    unsafe {
        let estate = (*node).ss.ps.state;
        let econtext = (*node).ss.ps.ps_ExprContext;

        // assign parameter value to qual
        for qual in &mut state.quals.iter_mut() {
            if let Some(param) = &mut qual.param {
                let mut current_value: Option<Value> = None;
                match param.kind {
                    ParamKind::PARAM_EXTERN => {
                        // get parameter list in execution state
                        let plist_info = (*estate).es_param_list_info;
                        if !plist_info.is_null() {
                            let params_cnt = (*plist_info).numParams as usize;
                            if param.id > 0 && param.id <= params_cnt {
                                let plist = (*plist_info).params.as_slice(params_cnt);
                                let p: pg_sys::ParamExternData = plist[param.id - 1];
                                if let Some(cell) =
                                    Cell::from_polymorphic_datum(p.value, p.isnull, p.ptype)
                                {
                                    qual.value = Value::Cell(cell.clone());
                                    current_value = Some(Value::Cell(cell));
                                }
                            }
                        }
                    }
                    ParamKind::PARAM_EXEC if !param.expr_eval.expr_state.is_null() => {
                        // evaluate the expression (a nestloop parameter, or a stable
                        // expression such as now() - interval '7 days')
                        let mut isnull = false;
                        if let Some(datum) = polyfill::exec_eval_expr(
                            param.expr_eval.expr_state,
                            econtext,
                            &mut isnull,
                        ) && !(datum.is_null() && !isnull && !pg_sys::get_typbyval(param.type_oid))
                            && let Some(cell) =
                                Cell::from_polymorphic_datum(datum, isnull, param.type_oid)
                        {
                            // (a by-reference value of 0 is a nestloop parameter
                            // before its first outer row: no value yet)
                            qual.value = Value::Cell(cell.clone());
                            current_value = Some(Value::Cell(cell));
                        }
                    }
                    _ => {}
                }

                let mut eval_value = param
                    .eval_value
                    .lock()
                    .expect("param.eval_value should be locked");
                *eval_value = current_value;
            }
        }
    }
}

fn compute_param_fingerprint<E: Into<ErrorReport>, W: ForeignDataWrapper<E>>(
    state: &FdwState<E, W>,
) -> String {
    state
        .quals
        .iter()
        .filter_map(|qual| {
            qual.param.as_ref().map(|param| {
                let eval_value = match param.eval_value.lock() {
                    Ok(value) => format!("{:?}", *value),
                    Err(_) => "lock_error".to_string(),
                };
                format!(
                    "{}|{}|{}|{}|{}|{}|{}",
                    qual.field,
                    qual.operator,
                    qual.use_or,
                    param.kind,
                    param.id,
                    param.type_oid,
                    eval_value,
                )
            })
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[pg_guard]
pub(super) extern "C-unwind" fn begin_foreign_scan<
    E: Into<ErrorReport>,
    W: ForeignDataWrapper<E>,
>(
    node: *mut pg_sys::ForeignScanState,
    eflags: c_int,
) {
    debug2!("---> begin_foreign_scan");
    unsafe {
        let scan_state = (*node).ss;
        let plan = scan_state.ps.plan as *mut pg_sys::ForeignScan;
        let planned = FdwState::<E, W>::deserialize_from_list((*plan).fdw_private as _);
        assert!(!planned.is_null());
        let planned = planned.as_ptr();
        // The planned state belongs to the plan, which a cached plan executes many
        // times: it is freed with the memory context holding the plan, and each
        // execution works on a copy.
        if !(*planned).freed_with_plan {
            let owner = pg_sys::GetMemoryChunkContext((*plan).fdw_private as *mut std::ffi::c_void);
            let cb = pg_sys::MemoryContextAllocZero(owner, std::mem::size_of::<pg_sys::MemoryContextCallback>())
                as *mut pg_sys::MemoryContextCallback;
            (*cb).func = Some(free_planned_state::<E, W>);
            (*cb).arg = planned as *mut std::ffi::c_void;
            pg_sys::MemoryContextRegisterResetCallback(owner, cb);
            (*planned).freed_with_plan = true;
        }
        let mut state = PgBox::<FdwState<E, W>>::from_pg(Box::into_raw(Box::new((*planned).for_execution())));
        // If the query ends without end_foreign_scan (an error, a cancel, a
        // statement_timeout), the executor's memory context drops the state.
        let exec_cxt = pg_sys::CurrentMemoryContext;
        let slot = pg_sys::MemoryContextAllocZero(exec_cxt, std::mem::size_of::<*mut std::ffi::c_void>())
            as *mut *mut std::ffi::c_void;
        *slot = state.as_ptr() as *mut std::ffi::c_void;
        let cb = pg_sys::MemoryContextAllocZero(exec_cxt, std::mem::size_of::<pg_sys::MemoryContextCallback>())
            as *mut pg_sys::MemoryContextCallback;
        (*cb).func = Some(free_execution_state::<E, W>);
        (*cb).arg = slot as *mut std::ffi::c_void;
        pg_sys::MemoryContextRegisterResetCallback(exec_cxt, cb);
        state.exec_slot = slot;

        // the parameters' expressions, from this plan's own fdw_exprs
        let fdw_exprs = (*plan).fdw_exprs;
        if !fdw_exprs.is_null() {
            let states = pg_sys::ExecInitExprList(fdw_exprs, node as *mut pg_sys::PlanState);
            let n = if states.is_null() { 0 } else { (*states).length };
            for qual in state.quals.iter_mut() {
                if let Some(param) = qual.param.as_mut()
                    && param.expr_eval.index >= 0
                    && param.expr_eval.index < n
                {
                    param.expr_eval.expr_state =
                        (*(*states).elements.add(param.expr_eval.index as usize)).ptr_value as _;
                }
            }
        }

        // assign parameter values to qual
        assign_parameter_value(node, &mut state);
        state.param_fingerprint = compute_param_fingerprint(&state);

        // begin scan if it is not EXPLAIN statement
        if eflags & pg_sys::EXEC_FLAG_EXPLAIN_ONLY as c_int <= 0 {
            // choose aggregate scan or normal scan based on state
            let result = if state.is_aggregate_scan() {
                state.begin_aggregate_scan()
            } else {
                state.begin_scan()
            };
            if result.is_err() {
                drop_fdw_state(state.as_ptr());
                result.report_unwrap();
            }

            // For aggregate upper-rel scans, scanrelid=0 so ss_currentRelation is
            // NULL. Use the number of output columns from state.tgts instead.
            let natts = if state.is_aggregate_scan() {
                state.tgts.len()
            } else {
                let rel = scan_state.ss_currentRelation;
                (*(*rel).rd_att).natts as usize
            };

            // initialize scan result lists
            state
                .values
                .extend_from_slice(&vec![0.into_datum().unwrap(); natts]);
            state.nulls.extend_from_slice(&vec![true; natts]);
        }

        (*node).fdw_state = state.into_pg() as _;
    }
}

#[pg_guard]
pub(super) extern "C-unwind" fn iterate_foreign_scan<
    E: Into<ErrorReport>,
    W: ForeignDataWrapper<E>,
>(
    node: *mut pg_sys::ForeignScanState,
) -> *mut pg_sys::TupleTableSlot {
    // `debug!` macros are quite expensive at the moment, so avoid logging in the inner loop
    // debug2!("---> iterate_foreign_scan");
    unsafe {
        let mut state = PgBox::<FdwState<E, W>>::from_pg((*node).fdw_state as _);

        // Parameter values are evaluated when the scan begins and on rescan (a
        // nested loop's new outer row): never per row.

        // clear slot
        let slot = (*node).ss.ss_ScanTupleSlot;
        polyfill::exec_clear_tuple(slot);

        state.row.clear();

        let result = state.iter_scan();
        if result.is_err() {
            drop_fdw_state(state.as_ptr());
            (*node).fdw_state = ptr::null::<FdwState<E, W>>() as _;
        }
        if result.report_unwrap().is_some() {
            if state.row.cols.len() != state.tgts.len() {
                report_error(
                    PgSqlErrorCode::ERRCODE_FDW_INVALID_COLUMN_NUMBER,
                    "target column number not match",
                );
                return slot;
            }

            // The row's values live in the scan's per-tuple memory, which Postgres
            // resets before fetching the next row (ForeignNext calls us there):
            // memory stays flat however many rows and however large (jsonb).
            let is_agg = state.is_aggregate_scan();
            let per_tuple = (*(*node).ss.ps.ps_ExprContext).ecxt_per_tuple_memory;
            PgMemoryContexts::For(per_tuple).switch_to(|_| {
                for i in 0..state.row.cells.len() {
                    let att_idx = state.tgts[i].num - 1;
                    let cell = state.row.cells.get_unchecked_mut(i);
                    match cell.take() {
                        Some(cell) => {
                            state.values[att_idx] = cell.into_datum().unwrap();
                            state.nulls[att_idx] = false;
                        }
                        None => {
                            state.nulls[att_idx] = true;
                        }
                    }
                }

                if is_agg {
                    // For aggregate scans the slot type is TTSOpsHeapTuple (because
                    // fdw_scan_tlist != NIL).  ExecStoreVirtualTuple is only correct
                    // for TTSOpsVirtual slots; using it on a HeapTuple slot leaves
                    // hslot->tuple == NULL, which causes tts_heap_materialize (called
                    // by Sort) to re-read tts_values after zeroing tts_nvalid —
                    // resulting in a SIGSEGV when a Sort node is present (ORDER BY).
                    // Form a proper HeapTuple and use ExecStoreHeapTuple instead.
                    let desc = (*slot).tts_tupleDescriptor;
                    let htup = pg_sys::heap_form_tuple(
                        desc,
                        state.values.as_mut_ptr(),
                        state.nulls.as_mut_ptr(),
                    );
                    // the tuple is in per-tuple memory, freed with it
                    pg_sys::ExecStoreHeapTuple(htup, slot, false);
                } else {
                    (*slot).tts_values = state.values.as_mut_ptr();
                    (*slot).tts_isnull = state.nulls.as_mut_ptr();
                    pg_sys::ExecStoreVirtualTuple(slot);
                }
            });
        }

        slot
    }
}

#[pg_guard]
pub(super) extern "C-unwind" fn re_scan_foreign_scan<
    E: Into<ErrorReport>,
    W: ForeignDataWrapper<E>,
>(
    node: *mut pg_sys::ForeignScanState,
) {
    debug2!("---> re_scan_foreign_scan");
    unsafe {
        let fdw_state = (*node).fdw_state as *mut FdwState<E, W>;
        if !fdw_state.is_null() {
            let mut state = PgBox::<FdwState<E, W>>::from_pg(fdw_state);
            assign_parameter_value(node, &mut state);
            let next_fingerprint = compute_param_fingerprint(&state);
            let result = if next_fingerprint != state.param_fingerprint {
                state.param_fingerprint = next_fingerprint;
                // end the active scan to release resources before restarting with new params
                let _ = state.end_scan();
                state.begin_scan()
            } else {
                state.re_scan()
            };
            if result.is_err() {
                drop_fdw_state(state.as_ptr());
                (*node).fdw_state = ptr::null::<FdwState<E, W>>() as _;
                result.report_unwrap();
            }
        }
    }
}

#[pg_guard]
pub(super) extern "C-unwind" fn end_foreign_scan<E: Into<ErrorReport>, W: ForeignDataWrapper<E>>(
    node: *mut pg_sys::ForeignScanState,
) {
    debug2!("---> end_foreign_scan");
    unsafe {
        let fdw_state = (*node).fdw_state as *mut FdwState<E, W>;
        if fdw_state.is_null() {
            return;
        }

        // the scan state is actually not allocated by PG, but we use 'from_pg()'
        // here just to tell PgBox don't free the state, instead we will handle
        // drop the state by ourselves
        let mut state = PgBox::<FdwState<E, W>>::from_pg(fdw_state);
        let result = state.end_scan();
        drop_fdw_state(state.as_ptr());
        (*node).fdw_state = ptr::null::<FdwState<E, W>>() as _;

        result.report_unwrap();
    }
}
