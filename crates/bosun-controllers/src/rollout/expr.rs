//! The subset of Argo Rollouts' `successCondition` / `failureCondition` language (expr)
//! that metric conditions use: `result` (a number, or a list for a vector query),
//! `result[i]`, numbers, `true`/`false`, `+ - * /`, `== != < <= > >=`, `&& || !` (and
//! `and or not`), parentheses, `len(x)`, `isNaN(x)`, `isInf(x)`, `default(x, y)`.
//!
//! Hand-written (about 200 lines) rather than a crate: the maintained evaluators are either
//! AGPL (evalexpr 12+) or whole languages (rhai, CEL) with their own syntax.

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Num(f64),
    Bool(bool),
    List(Vec<f64>),
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    Op(&'static str),
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    const OPS: [&str; 18] = [
        "&&", "||", "==", "!=", "<=", ">=", "<", ">", "!", "+", "-", "*", "/", "(", ")", "[", "]",
        ",",
    ];
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    'outer: while i < b.len() {
        let c = b[i] as char;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || (c == '.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let start = i;
            while i < b.len()
                && ((b[i] as char).is_ascii_alphanumeric()
                    || b[i] == b'.'
                    || ((b[i] == b'+' || b[i] == b'-') && matches!(b[i - 1], b'e' | b'E')))
            {
                i += 1;
            }
            let n = s[start..i]
                .parse::<f64>()
                .map_err(|_| format!("bad number {:?}", &s[start..i]))?;
            out.push(Tok::Num(n));
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let w = &s[start..i];
            out.push(match w {
                "and" => Tok::Op("&&"),
                "or" => Tok::Op("||"),
                "not" => Tok::Op("!"),
                _ => Tok::Ident(w.to_string()),
            });
            continue;
        }
        for op in OPS {
            if s[i..].starts_with(op) {
                out.push(Tok::Op(op));
                i += op.len();
                continue 'outer;
            }
        }
        return Err(format!("unexpected {c:?} at {i}"));
    }
    Ok(out)
}

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    result: &'a Value,
}

impl Parser<'_> {
    fn peek_op(&self, op: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Op(o)) if *o == op)
    }
    fn eat(&mut self, op: &str) -> bool {
        let hit = self.peek_op(op);
        if hit {
            self.pos += 1;
        }
        hit
    }
    fn expect(&mut self, op: &str) -> Result<(), String> {
        if self.eat(op) {
            Ok(())
        } else {
            Err(format!("expected {op:?}"))
        }
    }
    fn or(&mut self) -> Result<Value, String> {
        let mut v = self.and()?;
        while self.eat("||") {
            let r = self.and()?;
            v = Value::Bool(truthy(&v)? || truthy(&r)?);
        }
        Ok(v)
    }
    fn and(&mut self) -> Result<Value, String> {
        let mut v = self.not()?;
        while self.eat("&&") {
            let r = self.not()?;
            v = Value::Bool(truthy(&v)? && truthy(&r)?);
        }
        Ok(v)
    }
    fn not(&mut self) -> Result<Value, String> {
        if self.eat("!") {
            return Ok(Value::Bool(!truthy(&self.not()?)?));
        }
        self.cmp()
    }
    fn cmp(&mut self) -> Result<Value, String> {
        let l = self.add()?;
        for op in ["==", "!=", "<=", ">=", "<", ">"] {
            if self.eat(op) {
                let r = self.add()?;
                if let (Value::Bool(a), Value::Bool(b)) = (&l, &r) {
                    return match op {
                        "==" => Ok(Value::Bool(a == b)),
                        "!=" => Ok(Value::Bool(a != b)),
                        _ => Err(format!("{op} on booleans")),
                    };
                }
                let (a, b) = (num(&l)?, num(&r)?);
                return Ok(Value::Bool(match op {
                    "==" => a == b,
                    "!=" => a != b,
                    "<=" => a <= b,
                    ">=" => a >= b,
                    "<" => a < b,
                    _ => a > b,
                }));
            }
        }
        Ok(l)
    }
    fn add(&mut self) -> Result<Value, String> {
        let mut v = self.mul()?;
        loop {
            if self.eat("+") {
                v = Value::Num(num(&v)? + num(&self.mul()?)?);
            } else if self.eat("-") {
                v = Value::Num(num(&v)? - num(&self.mul()?)?);
            } else {
                return Ok(v);
            }
        }
    }
    fn mul(&mut self) -> Result<Value, String> {
        let mut v = self.unary()?;
        loop {
            if self.eat("*") {
                v = Value::Num(num(&v)? * num(&self.unary()?)?);
            } else if self.eat("/") {
                v = Value::Num(num(&v)? / num(&self.unary()?)?);
            } else {
                return Ok(v);
            }
        }
    }
    fn unary(&mut self) -> Result<Value, String> {
        if self.eat("-") {
            return Ok(Value::Num(-num(&self.unary()?)?));
        }
        let mut v = self.primary()?;
        while self.eat("[") {
            let i = num(&self.or()?)?;
            self.expect("]")?;
            v = match v {
                Value::List(l) => {
                    let n = l.len();
                    let idx = if i < 0.0 { n as f64 + i } else { i };
                    match l.get(idx as usize) {
                        Some(x) if idx >= 0.0 && idx.fract() == 0.0 => Value::Num(*x),
                        _ => return Err(format!("index {i} out of range (len {n})")),
                    }
                }
                _ => return Err("indexing a value that is not a list".into()),
            };
        }
        Ok(v)
    }
    fn primary(&mut self) -> Result<Value, String> {
        let t = self.toks.get(self.pos).cloned().ok_or("unexpected end")?;
        self.pos += 1;
        match t {
            Tok::Num(n) => Ok(Value::Num(n)),
            Tok::Op("(") => {
                let v = self.or()?;
                self.expect(")")?;
                Ok(v)
            }
            Tok::Ident(w) if w == "true" || w == "false" => Ok(Value::Bool(w == "true")),
            Tok::Ident(w) if w == "result" => Ok(self.result.clone()),
            Tok::Ident(f) if self.peek_op("(") => {
                self.pos += 1;
                let mut args = Vec::new();
                if !self.eat(")") {
                    loop {
                        // `default(result[0], 0)` must not fail on a missing element.
                        let save = self.pos;
                        match self.or() {
                            Ok(v) => args.push(Some(v)),
                            Err(e) if f == "default" && args.is_empty() => {
                                let _ = e;
                                self.pos = save;
                                self.skip_arg();
                                args.push(None);
                            }
                            Err(e) => return Err(e),
                        }
                        if self.eat(")") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                call(&f, args)
            }
            Tok::Ident(w) => Err(format!("unknown name {w:?}")),
            Tok::Op(o) => Err(format!("unexpected {o:?}")),
        }
    }
    /// Skips one argument (up to the `,` or `)` at this depth).
    fn skip_arg(&mut self) {
        let mut depth = 0;
        while let Some(t) = self.toks.get(self.pos) {
            match t {
                Tok::Op("(" | "[") => depth += 1,
                Tok::Op(")" | "]") if depth > 0 => depth -= 1,
                Tok::Op(")" | ",") if depth == 0 => return,
                _ => {}
            }
            self.pos += 1;
        }
    }
}

fn call(f: &str, args: Vec<Option<Value>>) -> Result<Value, String> {
    let one = |args: &[Option<Value>]| match args {
        [Some(v)] => Ok(v.clone()),
        _ => Err(format!("{f}() takes one argument")),
    };
    match f {
        "len" => match one(&args)? {
            Value::List(l) => Ok(Value::Num(l.len() as f64)),
            _ => Err("len() of a value that is not a list".into()),
        },
        "isNaN" => Ok(Value::Bool(num(&one(&args)?)?.is_nan())),
        "isInf" => Ok(Value::Bool(num(&one(&args)?)?.is_infinite())),
        "default" => match args.as_slice() {
            [Some(Value::Num(n)), Some(d)] if n.is_nan() => Ok(d.clone()),
            [Some(v), Some(_)] => Ok(v.clone()),
            [None, Some(d)] => Ok(d.clone()),
            _ => Err("default() takes two arguments".into()),
        },
        _ => Err(format!("unknown function {f}()")),
    }
}

fn num(v: &Value) -> Result<f64, String> {
    match v {
        Value::Num(n) => Ok(*n),
        Value::List(l) if l.len() == 1 => Ok(l[0]),
        Value::List(l) => Err(format!("a list of {} values used as a number", l.len())),
        Value::Bool(_) => Err("a boolean used as a number".into()),
    }
}

fn truthy(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        _ => Err("a number used as a condition".into()),
    }
}

/// Evaluates a condition with `result` bound; `Err` explains a syntax or type error.
pub fn eval(condition: &str, result: &Value) -> Result<bool, String> {
    let toks = lex(condition)?;
    let mut p = Parser {
        toks,
        pos: 0,
        result,
    };
    let v = p.or()?;
    if p.pos != p.toks.len() {
        return Err(format!("unexpected trailing input in {condition:?}"));
    }
    truthy(&v)
}
