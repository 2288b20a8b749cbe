//! Which CDR brand stands for which Basiq institution: the mapping rules, and the reading of
//! the operator's overrides file that settles what the rules cannot.
//!
//! Pure: plain data in, plain data out. Knows nothing of HTTP, the Register's JSON, SQLite or
//! files on disk (the caller reads the overrides file and hands its text over).
//!
//! The rules, in order, for each institution:
//! 1. An override wins. `Brand(id)` maps to that brand (kind `override`) even when the
//!    Register does not list it: the mapping is returned as written, and the caller, finding
//!    no brand and so no `publicBaseUri`, cannot poll it (and should say so). `Unmapped`
//!    (`"none"` in the file) maps to nothing (kind `override`).
//! 2. An institution without an ABN maps to nothing (kind `none`).
//! 3. The brands whose ABN equals the institution's: none → nothing (`none`); one → that
//!    brand (`abn`); several (one company, several brands: a bank and its sub-brands) → the
//!    one whose [`normalise_name`]d name equals the institution's normalised name or short
//!    name, if exactly one does (`abn+name`), else nothing (`ambiguous`).
//!
//! A brand is never chosen by name alone: a name is only a tie-breaker between brands of the
//! institution's own ABN, so no rule but an override can map a bank to another company.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::domain::cdr::{Brand, MAX_BRAND_ID_CHARS, abn_digits, is_brand_id, normalise_name};

/// A Basiq institution, as much of it as the mapping needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Institution {
    pub institution_id: String,
    pub name: Option<String>,
    pub short_name: Option<String>,
    /// Eleven digits ([`abn_digits`]); read through it again here, so a formatted one works.
    pub abn: Option<String>,
}

/// One line of the overrides file: an institution id mapped to a brand, or to none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Override {
    /// A `dataHolderBrandId`.
    Brand(String),
    /// `"none"`: this institution has no CDR brand to watch, whatever the rules would find.
    Unmapped,
}

/// How a mapping was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatchKind {
    /// The only brand with the institution's ABN.
    Abn,
    /// One of several brands with the institution's ABN, told apart by name.
    AbnName,
    /// The overrides file said so (a brand, or none).
    Override,
    /// Several brands have the institution's ABN and the names do not single one out.
    Ambiguous,
    /// No ABN, or no brand with it.
    None,
}

impl MatchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Abn => "abn",
            Self::AbnName => "abn+name",
            Self::Override => "override",
            Self::Ambiguous => "ambiguous",
            Self::None => "none",
        }
    }
}

impl std::fmt::Display for MatchKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for MatchKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One institution's brand, or none, and how that was found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mapping {
    pub institution_id: String,
    /// `Some` for kinds `abn` and `abn+name`, and for an override to a brand; `None` else.
    pub brand_id: Option<String>,
    pub kind: MatchKind,
}

/// One mapping per institution, in the order given (see the module documentation for the
/// rules).
pub fn map_institutions(
    institutions: &[Institution],
    brands: &[Brand],
    overrides: &HashMap<String, Override>,
) -> Vec<Mapping> {
    let brands: Vec<(Option<String>, String, &str)> = brands
        .iter()
        .map(|brand| {
            let abn = brand.abn.as_deref().and_then(abn_digits);
            (
                abn,
                normalise_name(&brand.brand_name),
                brand.brand_id.as_str(),
            )
        })
        .collect();
    institutions
        .iter()
        .map(|institution| {
            let (brand_id, kind) = match overrides.get(&institution.institution_id) {
                Some(Override::Brand(id)) => (Some(id.clone()), MatchKind::Override),
                Some(Override::Unmapped) => (None, MatchKind::Override),
                None => by_abn(institution, &brands),
            };
            Mapping {
                institution_id: institution.institution_id.clone(),
                brand_id,
                kind,
            }
        })
        .collect()
}

/// Rules 2 and 3; `brands` as (ABN, normalised name, id).
fn by_abn(
    institution: &Institution,
    brands: &[(Option<String>, String, &str)],
) -> (Option<String>, MatchKind) {
    let Some(abn) = institution.abn.as_deref().and_then(abn_digits) else {
        return (None, MatchKind::None);
    };
    // By id: a brand listed twice is one brand.
    let mut same_abn: BTreeMap<&str, &str> = BTreeMap::new();
    for (brand_abn, name, id) in brands {
        if brand_abn.as_deref() == Some(abn.as_str()) {
            same_abn.entry(id).or_insert(name);
        }
    }
    let mut candidates = same_abn.into_iter();
    match (candidates.next(), candidates.next()) {
        (None, _) => (None, MatchKind::None),
        (Some((id, _)), None) => (Some(id.to_owned()), MatchKind::Abn),
        (Some(first), Some(second)) => {
            let names: Vec<String> = [&institution.name, &institution.short_name]
                .into_iter()
                .flatten()
                .map(|name| normalise_name(name))
                .filter(|name| !name.is_empty())
                .collect();
            let mut named = [first, second]
                .into_iter()
                .chain(candidates)
                .filter(|(_, name)| names.iter().any(|n| n == name));
            match (named.next(), named.next()) {
                (Some((id, _)), None) => (Some(id.to_owned()), MatchKind::AbnName),
                _ => (None, MatchKind::Ambiguous),
            }
        }
    }
}

/// The overrides file's text (TOML): one `institution id = "dataHolderBrandId"` or
/// `institution id = "none"` per line (`none` in any case), comments allowed. An error names
/// the line and the key: a value that is not a string (a number, a table, an array), an
/// institution id that is not 1 to 64 ASCII letters, digits, `-` or `_`, a brand id that
/// breaks [`is_brand_id`], or a TOML syntax error (toml's own message, with line and column).
pub fn parse_overrides(text: &str) -> Result<HashMap<String, Override>, String> {
    let table: BTreeMap<String, toml::Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e| format!("the overrides file is not valid TOML: {e}"))?;
    let mut overrides = HashMap::with_capacity(table.len());
    for (key, value) in table {
        let line = text
            .get(..value.span().start)
            .map_or(0, |before| before.matches('\n').count())
            + 1;
        let at = format!("line {line}, {key:?}");
        if key.is_empty()
            || key.len() > 64
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "{at}: an institution id is 1 to 64 ASCII letters, digits, '-' or '_'"
            ));
        }
        let toml::Value::String(brand) = value.get_ref() else {
            return Err(format!(
                "{at}: expected a dataHolderBrandId or \"none\" in quotes, found {} {}",
                article(value.get_ref().type_str()),
                value.get_ref().type_str()
            ));
        };
        let brand = brand.trim();
        let entry = if brand.eq_ignore_ascii_case("none") {
            Override::Unmapped
        } else if is_brand_id(brand) {
            Override::Brand(brand.to_owned())
        } else {
            return Err(format!(
                "{at}: {brand:?} is neither \"none\" nor a dataHolderBrandId (1 to \
                 {MAX_BRAND_ID_CHARS} printable ASCII characters, no spaces)"
            ));
        };
        overrides.insert(key, entry);
    }
    Ok(overrides)
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn brand(id: &str, name: &str, abn: Option<&str>) -> Brand {
        Brand {
            brand_id: id.into(),
            brand_name: name.into(),
            abn: abn.map(str::to_owned),
            public_base_uri: None,
            last_updated: None,
        }
    }

    fn institution(
        id: &str,
        name: &str,
        short_name: Option<&str>,
        abn: Option<&str>,
    ) -> Institution {
        Institution {
            institution_id: id.into(),
            name: Some(name.into()),
            short_name: short_name.map(str::to_owned),
            abn: abn.map(str::to_owned),
        }
    }

    const CBA: &str = "48123123124";
    const WBC: &str = "33007457141";

    fn register() -> Vec<Brand> {
        vec![
            brand("cba", "CommBank", Some(CBA)),
            brand("wbc", "Westpac", Some(WBC)),
            brand("stg", "St.George Bank", Some(WBC)),
            brand("bom", "Bank of Melbourne", Some(WBC)),
            brand("bsa", "BankSA", Some(WBC)),
            brand("bsa-2", "Bank SA", Some(WBC)),
            brand("anon", "Nameless", None),
        ]
    }

    fn one(
        institution: Institution,
        overrides: &[(&str, Override)],
    ) -> (Option<String>, MatchKind) {
        let overrides = overrides
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let mapped = map_institutions(&[institution], &register(), &overrides);
        assert_eq!(mapped.len(), 1);
        (mapped[0].brand_id.clone(), mapped[0].kind)
    }

    fn some(id: &str) -> Option<String> {
        Some(id.to_owned())
    }

    #[test]
    fn the_only_brand_with_the_institution_s_abn_is_an_abn_match() {
        let cba = institution("AU00001", "Commonwealth Bank", Some("CBA"), Some(CBA));
        assert_eq!(one(cba, &[]), (some("cba"), MatchKind::Abn));
        // However the ABN was written.
        let spaced = institution("AU00001", "Commonwealth Bank", None, Some("48 123 123 124"));
        assert_eq!(one(spaced, &[]), (some("cba"), MatchKind::Abn));
    }

    #[test]
    fn brands_sharing_an_abn_are_told_apart_by_the_name_or_the_short_name() {
        for (name, short_name, expected) in [
            ("Westpac", None, "wbc"),
            ("WESTPAC", Some("WBC"), "wbc"),
            ("Westpac Banking Corporation", Some("Westpac"), "wbc"),
            ("St.George Bank", None, "stg"),
            ("St George", Some("st.george  bank"), "stg"),
            ("Bank of Melbourne", None, "bom"),
        ] {
            let inst = institution("AU00002", name, short_name, Some(WBC));
            assert_eq!(
                one(inst, &[]),
                (some(expected), MatchKind::AbnName),
                "{name:?} / {short_name:?}"
            );
        }
    }

    #[test]
    fn brands_sharing_an_abn_that_no_single_name_picks_are_ambiguous() {
        for (name, short_name) in [
            // No brand of that name.
            ("Westpac Group", None),
            ("St George", None),
            // Two brands of that normalised name ("banksa" and "bank sa" differ, so one each).
            ("BankSA", Some("Bank SA")),
            // An empty name matches nothing.
            ("", Some("  ")),
        ] {
            let inst = institution("AU00003", name, short_name, Some(WBC));
            assert_eq!(
                one(inst, &[]),
                (None, MatchKind::Ambiguous),
                "{name:?} / {short_name:?}"
            );
        }
    }

    #[test]
    fn a_brand_listed_twice_is_still_one_brand() {
        let brands = vec![
            brand("cba", "CommBank", Some(CBA)),
            brand("cba", "CommBank", Some(CBA)),
        ];
        let mapped = map_institutions(
            &[institution("AU00001", "Commonwealth Bank", None, Some(CBA))],
            &brands,
            &HashMap::new(),
        );
        assert_eq!(mapped[0].brand_id, some("cba"));
        assert_eq!(mapped[0].kind, MatchKind::Abn);
    }

    #[test]
    fn an_institution_without_an_abn_or_with_one_no_brand_has_is_not_mapped() {
        for abn in [
            None,
            Some("12345678901"),
            Some("not an abn"),
            Some("4812312312"),
        ] {
            let inst = institution("AU00004", "CommBank", None, abn);
            assert_eq!(one(inst, &[]), (None, MatchKind::None), "{abn:?}");
        }
    }

    #[test]
    fn an_override_wins_over_the_rules() {
        let cba = || institution("AU00001", "Commonwealth Bank", None, Some(CBA));
        assert_eq!(
            one(cba(), &[("AU00001", Override::Brand("wbc".into()))]),
            (some("wbc"), MatchKind::Override)
        );
        assert_eq!(
            one(cba(), &[("AU00001", Override::Unmapped)]),
            (None, MatchKind::Override)
        );
        // An override for another institution changes nothing here.
        assert_eq!(
            one(cba(), &[("AU00009", Override::Unmapped)]),
            (some("cba"), MatchKind::Abn)
        );
        // It settles an ambiguity, and needs no ABN.
        let no_abn = institution("AU00005", "Westpac Group", None, None);
        assert_eq!(
            one(no_abn, &[("AU00005", Override::Brand("stg".into()))]),
            (some("stg"), MatchKind::Override)
        );
    }

    #[test]
    fn an_override_to_a_brand_the_register_does_not_list_is_kept_as_written() {
        let inst = institution("AU00006", "New Bank", None, None);
        assert_eq!(
            one(inst, &[("AU00006", Override::Brand("not-listed".into()))]),
            (some("not-listed"), MatchKind::Override)
        );
    }

    #[test]
    fn mappings_come_one_per_institution_in_the_order_given() {
        let institutions = [
            institution("AU3", "x", None, None),
            institution("AU1", "Westpac", None, Some(WBC)),
            institution("AU2", "y", None, Some(CBA)),
        ];
        let mapped = map_institutions(&institutions, &register(), &HashMap::new());
        let ids: Vec<&str> = mapped.iter().map(|m| m.institution_id.as_str()).collect();
        assert_eq!(ids, ["AU3", "AU1", "AU2"]);
    }

    #[test]
    fn match_kinds_serialise_as_their_labels() {
        for (kind, label) in [
            (MatchKind::Abn, "abn"),
            (MatchKind::AbnName, "abn+name"),
            (MatchKind::Override, "override"),
            (MatchKind::Ambiguous, "ambiguous"),
            (MatchKind::None, "none"),
        ] {
            assert_eq!(kind.as_str(), label);
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(label)
            );
        }
        let mapping = Mapping {
            institution_id: "AU1".into(),
            brand_id: None,
            kind: MatchKind::AbnName,
        };
        assert_eq!(
            serde_json::to_value(&mapping).unwrap(),
            serde_json::json!({"institution_id": "AU1", "brand_id": null, "kind": "abn+name"})
        );
    }

    #[test]
    fn the_overrides_file_maps_institution_ids_to_brand_ids_or_none() {
        let text = "# Basiq institution id = CDR dataHolderBrandId, or \"none\"\n\
                    AU00002 = \"0b1c2d3e-0000-4000-8000-000000000001\"\n\
                    AU00005 = \"none\"\n\
                    \"AU00007\" = ' NONE '\n\
                    AU-X_1 = \"brand.1\" # trailing comment\n";
        let overrides = parse_overrides(text).unwrap();
        assert_eq!(overrides.len(), 4);
        assert_eq!(
            overrides["AU00002"],
            Override::Brand("0b1c2d3e-0000-4000-8000-000000000001".into())
        );
        assert_eq!(overrides["AU00005"], Override::Unmapped);
        assert_eq!(overrides["AU00007"], Override::Unmapped);
        assert_eq!(overrides["AU-X_1"], Override::Brand("brand.1".into()));
        assert_eq!(parse_overrides("").unwrap(), HashMap::new());
        assert_eq!(parse_overrides("# nothing yet\n").unwrap(), HashMap::new());
    }

    #[test]
    fn an_overrides_value_that_is_not_a_string_is_an_error_naming_its_line_and_key() {
        for (text, line, found) in [
            ("AU00001 = \"a\"\nAU00002 = 42\n", 2, "an integer"),
            ("\n\nAU00003 = true\n", 3, "a boolean"),
            ("AU00004 = [\"a\", \"b\"]\n", 1, "an array"),
            ("AU00001 = \"a\"\n[AU00005]\nbrand = \"b\"\n", 2, "a table"),
        ] {
            let err = parse_overrides(text).unwrap_err();
            assert!(err.starts_with(&format!("line {line}, \"AU0000")), "{err}");
            assert!(err.contains(found), "{err}");
        }
    }

    #[test]
    fn an_overrides_file_with_a_bad_id_or_bad_toml_is_an_error_naming_the_line() {
        let err = parse_overrides("AU00001 = \"a b\"\n").unwrap_err();
        assert!(err.starts_with("line 1, \"AU00001\""), "{err}");
        let err = parse_overrides("AU00001 = \"\"\n").unwrap_err();
        assert!(err.contains("neither"), "{err}");
        let err = parse_overrides("\"AU 1\" = \"b\"\n").unwrap_err();
        assert!(err.contains("institution id"), "{err}");
        let err = parse_overrides("\"\" = \"b\"\n").unwrap_err();
        assert!(err.contains("institution id"), "{err}");
        let err = parse_overrides("AU00001 = \"a\"\nAU00002 = b\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        let err = parse_overrides("AU00001 = \"a\"\nAU00001 = \"b\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    const ABNS: [&str; 3] = ["11111111111", "22222222222", "33 333 333 333"];
    const NAMES: [&str; 4] = ["Big Bank", "big  bank", "Small Bank", "Other"];

    fn arb_brands() -> impl Strategy<Value = Vec<Brand>> {
        proptest::collection::vec(
            (0usize..6, proptest::option::of(0usize..3), 0usize..4),
            0..8,
        )
        .prop_map(|items| {
            items
                .into_iter()
                .map(|(id, abn, name)| brand(&format!("b{id}"), NAMES[name], abn.map(|a| ABNS[a])))
                .collect()
        })
    }

    fn arb_institutions() -> impl Strategy<Value = Vec<Institution>> {
        proptest::collection::vec(
            (
                proptest::option::of(0usize..3),
                proptest::option::of(0usize..4),
                proptest::option::of(0usize..4),
            ),
            0..8,
        )
        .prop_map(|items| {
            items
                .into_iter()
                .enumerate()
                .map(|(n, (abn, name, short))| Institution {
                    institution_id: format!("AU{n}"),
                    name: name.map(|i| NAMES[i].to_owned()),
                    short_name: short.map(|i| NAMES[i].to_owned()),
                    abn: abn.map(|a| ABNS[a].to_owned()),
                })
                .collect()
        })
    }

    fn arb_overrides() -> impl Strategy<Value = HashMap<String, Override>> {
        proptest::collection::hash_map(
            (0usize..10).prop_map(|n| format!("AU{n}")),
            proptest::option::of(0usize..8).prop_map(|b| match b {
                Some(b) => Override::Brand(format!("b{b}")),
                None => Override::Unmapped,
            }),
            0..4,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn only_an_override_maps_an_institution_to_a_brand_of_another_abn(
            institutions in arb_institutions(),
            brands in arb_brands(),
            overrides in arb_overrides(),
        ) {
            let mapped = map_institutions(&institutions, &brands, &overrides);
            prop_assert_eq!(mapped.len(), institutions.len());
            for (institution, mapping) in institutions.iter().zip(&mapped) {
                prop_assert_eq!(&mapping.institution_id, &institution.institution_id);
                let overridden = overrides.contains_key(&institution.institution_id);
                prop_assert_eq!(mapping.kind == MatchKind::Override, overridden);
                match mapping.kind {
                    MatchKind::Abn | MatchKind::AbnName => {
                        let id = mapping.brand_id.as_deref().expect("a matched brand");
                        let abn = institution.abn.as_deref().and_then(abn_digits);
                        prop_assert!(abn.is_some());
                        let same_abn = brands.iter().any(|b| {
                            b.brand_id == id && b.abn.as_deref().and_then(abn_digits) == abn
                        });
                        prop_assert!(same_abn, "{:?} mapped to a brand of another ABN", institution);
                    }
                    MatchKind::Ambiguous | MatchKind::None => prop_assert_eq!(&mapping.brand_id, &None),
                    MatchKind::Override => {}
                }
            }
        }
    }
}
