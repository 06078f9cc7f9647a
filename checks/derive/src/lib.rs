//! `#[derive(ViolationMetadata)]`: the documentation of a finding kind is the doc comment of its type, as ruff's
//! `ViolationMetadata` takes a rule's page from its struct's. The comment holds the summary (its first
//! paragraph), then the sections `# Why`, `# How` and `# Fix`, one paragraph each; `#[kind(..)]` gives
//! the id, the grade and the documented example:
//!
//! ```text
//! /// The samples are in sequential order and the loader does not shuffle
//! ///
//! /// # Why
//! /// Without shuffling, each batch holds neighbouring frames …
//! ///
//! /// # How
//! /// Adjacency ratio = …
//! ///
//! /// # Fix
//! /// Set shuffle=True in the DataLoader …
//! #[derive(Serialize, ViolationMetadata)]
//! #[kind(id = "sequential-data/unshuffled-order", grade = error)]
//! #[kind(example(args = "fixtures/configs/x.toml", severity = error, message = "…"))]
//! pub struct UnshuffledOrder { … }
//! ```
//!
//! It implements `trainlint_checks::finding::ViolationMetadata` (one `const KIND: KindInfo`). The lines of a
//! paragraph are joined with one space, so a text reads the same in rustdoc, `explain` and SARIF.
//! `grade` is `error`, `warning`, or `past(BELOW, ABOVE, "option")` for a kind graded by its
//! measure against a configured threshold.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as Tokens};
use quote::{quote, ToTokens};
use syn::{
    parse_macro_input, Attribute, DeriveInput, Error, Expr, ExprLit, Ident, Lit, LitStr, Meta,
};

#[proc_macro_derive(ViolationMetadata, attributes(kind))]
pub fn derive_kind(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(Error::into_compile_error)
        .into()
}

fn expand(input: &DeriveInput) -> syn::Result<Tokens> {
    let docs = Docs::parse(&input.attrs, &input.ident)?;
    let attrs = KindAttrs::parse(&input.attrs)?;
    let id = attrs.id.ok_or_else(|| {
        Error::new_spanned(&input.ident, "#[kind(id = \"check/kind\")] is missing")
    })?;
    let grade = attrs
        .grade
        .ok_or_else(|| Error::new_spanned(&input.ident, "#[kind(grade = ..)] is missing"))?;
    let example = match attrs.example {
        Some(Example {
            args,
            severity,
            message,
        }) => quote! {
            ::core::option::Option::Some(crate::finding::Example {
                severity: #severity,
                args: #args,
                message: #message,
            })
        },
        None => quote!(::core::option::Option::None),
    };
    let name = &input.ident;
    let (summary, why, how, fix) = (&docs.summary, &docs.why, &docs.how, &docs.fix);
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics crate::finding::ViolationMetadata for #name #ty_generics #where_clause {
            const KIND: crate::finding::KindInfo = crate::finding::KindInfo {
                id: #id,
                grade: #grade,
                summary: #summary,
                why: #why,
                how: #how,
                fix: #fix,
                example: #example,
            };
        }
    })
}

/// The doc comment, split into the summary and the three sections.
struct Docs {
    summary: String,
    why: String,
    how: String,
    fix: String,
}

impl Docs {
    fn parse(attrs: &[Attribute], name: &Ident) -> syn::Result<Docs> {
        const SECTIONS: [&str; 3] = ["# Why", "# How", "# Fix"];
        // Paragraphs per part: part 0 is the summary, then one per section in order.
        let mut parts: Vec<Vec<Vec<String>>> = vec![vec![vec![]]];
        for attr in attrs.iter().filter(|a| a.path().is_ident("doc")) {
            let Meta::NameValue(nv) = &attr.meta else {
                continue;
            };
            let Expr::Lit(ExprLit {
                lit: Lit::Str(text),
                ..
            }) = &nv.value
            else {
                return Err(Error::new_spanned(
                    attr,
                    "a kind's doc comment must be plain text",
                ));
            };
            let line = text.value();
            let line = line
                .strip_prefix(' ')
                .unwrap_or(&line)
                .trim_end()
                .to_string();
            if line.starts_with('#') {
                let expected = SECTIONS.get(parts.len() - 1).copied();
                if expected != Some(line.as_str()) {
                    let want =
                        expected.map_or("no more sections".to_string(), |s| format!("`{s}`"));
                    return Err(Error::new_spanned(attr, format!("expected {want} here")));
                }
                parts.push(vec![vec![]]);
            } else if line.is_empty() {
                let part = parts.last_mut().expect("one part at least");
                if !part.last().expect("one paragraph at least").is_empty() {
                    part.push(vec![]);
                }
            } else {
                let part = parts.last_mut().expect("one part at least");
                part.last_mut().expect("one paragraph at least").push(line);
            }
        }
        let mut texts = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let paragraphs: Vec<&Vec<String>> = part.iter().filter(|p| !p.is_empty()).collect();
            let what = if i == 0 {
                "the summary"
            } else {
                SECTIONS[i - 1]
            };
            match paragraphs.as_slice() {
                [one] => texts.push(one.join(" ")),
                [] => {
                    return Err(Error::new_spanned(
                        name,
                        format!("{what} of the doc comment is empty"),
                    ))
                }
                _ => {
                    return Err(Error::new_spanned(
                        name,
                        format!("{what} of the doc comment must be one paragraph"),
                    ))
                }
            }
        }
        if texts.len() != 4 {
            let missing = SECTIONS[texts.len() - 1];
            return Err(Error::new_spanned(
                name,
                format!("the doc comment lacks its `{missing}` section"),
            ));
        }
        let mut texts = texts.into_iter();
        let mut next = || texts.next().expect("four texts");
        Ok(Docs {
            summary: next(),
            why: next(),
            how: next(),
            fix: next(),
        })
    }
}

struct Example {
    args: LitStr,
    severity: Tokens,
    message: LitStr,
}

#[derive(Default)]
struct KindAttrs {
    id: Option<LitStr>,
    grade: Option<Tokens>,
    example: Option<Example>,
}

impl KindAttrs {
    fn parse(attrs: &[Attribute]) -> syn::Result<KindAttrs> {
        let mut out = KindAttrs::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident("kind")) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("id") {
                    out.id = Some(meta.value()?.parse()?);
                } else if meta.path.is_ident("grade") {
                    let grade: Ident = meta.value()?.parse()?;
                    out.grade = Some(if grade == "past" {
                        let content;
                        syn::parenthesized!(content in meta.input);
                        let below: Ident = content.parse()?;
                        content.parse::<syn::Token![,]>()?;
                        let above: Ident = content.parse()?;
                        content.parse::<syn::Token![,]>()?;
                        let option: LitStr = content.parse()?;
                        let (below, above) = (severity(&below)?, severity(&above)?);
                        quote!(crate::finding::Grade::Past { below: #below, above: #above, option: #option })
                    } else {
                        let severity = severity(&grade)?;
                        quote!(crate::finding::Grade::Fixed(#severity))
                    });
                } else if meta.path.is_ident("example") {
                    let (mut args, mut sev, mut message) = (None, None, None);
                    meta.parse_nested_meta(|inner| {
                        if inner.path.is_ident("args") {
                            args = Some(inner.value()?.parse()?);
                        } else if inner.path.is_ident("severity") {
                            sev = Some(severity(&inner.value()?.parse()?)?);
                        } else if inner.path.is_ident("message") {
                            message = Some(inner.value()?.parse()?);
                        } else {
                            return Err(inner.error("expected `args`, `severity` or `message`"));
                        }
                        Ok(())
                    })?;
                    let missing = |what: &str| meta.error(format!("the example lacks `{what}`"));
                    out.example = Some(Example {
                        args: args.ok_or_else(|| missing("args"))?,
                        severity: sev.ok_or_else(|| missing("severity"))?,
                        message: message.ok_or_else(|| missing("message"))?,
                    });
                } else {
                    return Err(meta.error("expected `id`, `grade` or `example`"));
                }
                Ok(())
            })?;
        }
        Ok(out)
    }
}

/// `#[skip_serializing_none]` on a struct: every `Option` field gets
/// `#[serde(skip_serializing_if = "Option::is_none")]`, as `serde_with`'s attribute of that name does,
/// so a finding's JSON evidence holds only the numbers it has. Put it above `#[derive(Serialize)]`.
#[proc_macro_attribute]
pub fn skip_serializing_none(args: TokenStream, input: TokenStream) -> TokenStream {
    if !args.is_empty() {
        let args = Tokens::from(args);
        return Error::new_spanned(args, "takes no arguments")
            .into_compile_error()
            .into();
    }
    let mut input = parse_macro_input!(input as DeriveInput);
    let syn::Data::Struct(data) = &mut input.data else {
        return Error::new_spanned(&input.ident, "#[skip_serializing_none] is for structs")
            .into_compile_error()
            .into();
    };
    for field in data.fields.iter_mut() {
        let is_option = matches!(&field.ty, syn::Type::Path(p)
            if p.qself.is_none() && p.path.segments.last().is_some_and(|s| s.ident == "Option"));
        let has_own = field.attrs.iter().any(|a| {
            a.path().is_ident("serde")
                && a.meta
                    .to_token_stream()
                    .to_string()
                    .contains("skip_serializing")
        });
        if is_option && !has_own {
            field
                .attrs
                .push(syn::parse_quote!(#[serde(skip_serializing_if = "Option::is_none")]));
        }
    }
    quote!(#input).into()
}

fn severity(word: &Ident) -> syn::Result<Tokens> {
    let variant = match word.to_string().as_str() {
        "error" => "Error",
        "warning" => "Warning",
        _ => return Err(Error::new(word.span(), "expected `error` or `warning`")),
    };
    let variant = Ident::new(variant, Span::call_site());
    Ok(quote!(crate::finding::Severity::#variant))
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn docs(input: DeriveInput) -> Result<Docs, String> {
        Docs::parse(&input.attrs, &input.ident).map_err(|e| e.to_string())
    }

    #[test]
    fn the_summary_and_sections_join_their_lines_with_one_space() {
        let d = docs(parse_quote! {
            /// The loss
            /// diverges
            ///
            /// # Why
            /// It
            /// grows.
            ///
            /// # How
            /// `max_ratio`
            ///
            /// # Fix
            /// Lower the lr.
            struct K;
        })
        .unwrap();
        assert_eq!(d.summary, "The loss diverges");
        assert_eq!(d.why, "It grows.");
        assert_eq!(d.how, "`max_ratio`");
        assert_eq!(d.fix, "Lower the lr.");
    }

    #[test]
    fn a_missing_misplaced_or_split_section_is_a_compile_error() {
        let missing = docs(parse_quote! {
            /// S
            /// # Why
            /// w
            /// # How
            /// h
            struct K;
        });
        assert_eq!(
            missing.err().unwrap(),
            "the doc comment lacks its `# Fix` section"
        );
        let misplaced = docs(parse_quote! {
            /// S
            /// # How
            struct K;
        });
        assert_eq!(misplaced.err().unwrap(), "expected `# Why` here");
        let split = docs(parse_quote! {
            /// S
            /// # Why
            /// one
            ///
            /// two
            /// # How
            /// h
            /// # Fix
            /// f
            struct K;
        });
        assert_eq!(
            split.err().unwrap(),
            "# Why of the doc comment must be one paragraph"
        );
    }
}
