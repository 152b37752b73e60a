use rquickjs::{context::intrinsic, CatchResultExt, Context, Runtime, Value};
use std::time::Instant;
use std::sync::{Arc, atomic::{AtomicBool, Ordering}};

fn main() {
    let rt = Runtime::new().unwrap();
    rt.set_memory_limit(16 << 20);
    rt.set_max_stack_size(512 << 10);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let start = Instant::now();
    rt.set_interrupt_handler(Some(Box::new(move || { s2.load(Ordering::Relaxed) || start.elapsed().as_millis() > 300 })));
    let ctx = Context::builder()
        .with::<intrinsic::Eval>()
        .with::<intrinsic::RegExpCompiler>()
        .with::<intrinsic::RegExp>()
        .with::<intrinsic::Json>()
        .with::<intrinsic::Date>()
        .with::<intrinsic::Promise>()
        .build(&rt)
        .unwrap();
    ctx.with(|ctx| {
        for src in [
            "async function f(){ return 1 }; typeof f()",
            "async function g(){ await null; return 1 }; g(); Promise.resolve(1).then(function(){ globalThis.ran = 1 }); 1",
            "function* gen(){ yield 1 }; gen().next().value",
            "var a = []; while (true) { a.push('xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' + a.length) }",
            "function r(){ return r() } r()",
            "'x'.repeat(1<<28)",
        ] {
            let t = Instant::now();
            let r: Result<Value, _> = ctx.eval(src);
            match r.catch(&ctx) {
                Ok(v) => println!("{src:?} => {:?} {:?}", v, t.elapsed()),
                Err(e) => println!("{src:?} => ERR {e:?} {:?}", t.elapsed()),
            }
            println!("pending {}", rt.is_job_pending());
        }
    });
    let ctx2 = Context::builder().with::<intrinsic::Eval>().with::<intrinsic::RegExp>().with::<intrinsic::RegExpCompiler>().build(&rt).unwrap();
    ctx2.with(|ctx| {
        let t = Instant::now();
        let r: Result<Value, _> = ctx.eval("/(a+)+$/.test('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!')");
        println!("regex {:?} {:?}", r.catch(&ctx).map(|_| ()), t.elapsed());
        let r: Result<Value, _> = ctx.eval("while(true){}");
        println!("loop {:?} {:?}", r.catch(&ctx).map(|_| ()), t.elapsed());
    });
    println!("done, dropping");
}
