//! Typed builders for payloads, so that a precursor alert or a document takes a few lines of
//! Rust and goes straight into a [`Draft`].
//!
//! The generated protobuf structs ([`pb`]) are complete but loose: quantities, CAS numbers and
//! port codes are strings there. The builders here take typed values that are checked when they
//! are made ([`CasNumber`] verifies its check digit, [`UnLocode`] its shape, [`Quantity`] its
//! unit), and every builder converts into a [`Draft`] with `into_draft()` or `Draft::from`.
//! Anything a builder does not cover stays reachable: `build()` returns the protobuf struct.

use std::fmt;

use crate::draft::Draft;
use crate::wire::pb;

/// Free text in a language (BCP-47 tag), without translations.
///
/// ```
/// let t = enlace::payloads::text("es-MX", "Reunión de enlace el martes");
/// assert_eq!(t.language, "es-MX");
/// ```
pub fn text(language: &str, text: &str) -> pb::LocalizedText {
    pb::LocalizedText {
        language: language.to_owned(),
        text: text.to_owned(),
        translations: Vec::new(),
    }
}

/// A CAS Registry Number, e.g. `345-78-8` (pseudoephedrine hydrochloride), checked: two to
/// seven digits, two digits, and a check digit that must match.
///
/// ```
/// use enlace::payloads::CasNumber;
///
/// let cas: CasNumber = "345-78-8".parse().unwrap();
/// assert_eq!(cas.to_string(), "345-78-8");
/// assert!("345-78-9".parse::<CasNumber>().is_err()); // wrong check digit
/// assert!("pseudoephedrine".parse::<CasNumber>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CasNumber(String);

/// A value that is not what its type requires, and why: correct the value (the message says
/// the expected form) and parse it again.
///
/// ```
/// let err = "345-78-9".parse::<enlace::payloads::CasNumber>().unwrap_err();
/// assert_eq!(err.what, "CAS number");
/// assert_eq!(err.why, "its check digit does not match");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {what}: {why}")]
pub struct BadValue {
    /// What the value was meant to be, e.g. `CAS number` or `UN/LOCODE`.
    pub what: &'static str,
    /// The value as given, cut to its first 40 characters.
    pub value: String,
    /// What is wrong with it, with an example of the expected form.
    pub why: &'static str,
}

impl std::str::FromStr for CasNumber {
    type Err = BadValue;

    fn from_str(s: &str) -> Result<CasNumber, BadValue> {
        let bad = |why| BadValue {
            what: "CAS number",
            value: s.chars().take(40).collect(),
            why,
        };
        let parts: Vec<&str> = s.split('-').collect();
        let [a, b, c] = parts[..] else {
            return Err(bad("expected three groups of digits, e.g. 345-78-8"));
        };
        let digits = |p: &str, n: std::ops::RangeInclusive<usize>| {
            n.contains(&p.len()) && p.bytes().all(|x| x.is_ascii_digit())
        };
        if !(digits(a, 2..=7) && digits(b, 2..=2) && digits(c, 1..=1)) {
            return Err(bad("expected 2 to 7 digits, 2 digits and 1 check digit"));
        }
        // The check digit is the sum of the other digits, each times its position from the
        // right (starting at 1), modulo 10.
        let sum: u32 = a
            .bytes()
            .chain(b.bytes())
            .rev()
            .enumerate()
            .map(|(i, d)| (i as u32 + 1) * u32::from(d - b'0'))
            .sum();
        if sum % 10 != u32::from(c.as_bytes()[0] - b'0') {
            return Err(bad("its check digit does not match"));
        }
        Ok(CasNumber(s.to_owned()))
    }
}

impl fmt::Display for CasNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A UN/LOCODE, five letters or digits without the space, e.g. `MXZLO` (Manzanillo); the
/// first two are the country's ISO 3166-1 code.
///
/// ```
/// use enlace::payloads::UnLocode;
///
/// let port: UnLocode = "MXZLO".parse().unwrap();
/// assert_eq!(port.country(), "MX");
/// assert!("Manzanillo".parse::<UnLocode>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnLocode(String);

impl UnLocode {
    /// The country part (ISO 3166-1 alpha-2).
    ///
    /// ```
    /// let port: enlace::payloads::UnLocode = "CNSHA".parse().unwrap();
    /// assert_eq!(port.country(), "CN");
    /// ```
    pub fn country(&self) -> &str {
        &self.0[..2]
    }
}

impl std::str::FromStr for UnLocode {
    type Err = BadValue;

    fn from_str(s: &str) -> Result<UnLocode, BadValue> {
        let ok = s.len() == 5
            && s[..2].bytes().all(|b| b.is_ascii_uppercase())
            && s[2..]
                .bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'9').contains(&b));
        if ok {
            Ok(UnLocode(s.to_owned()))
        } else {
            Err(BadValue {
                what: "UN/LOCODE",
                value: s.chars().take(40).collect(),
                why: "expected a country code and three letters or digits, e.g. MXZLO",
            })
        }
    }
}

impl fmt::Display for UnLocode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A unit of measure for chemical quantities (their UCUM codes on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Kilograms (`kg`).
    Kilogram,
    /// Grams (`g`).
    Gram,
    /// Milligrams (`mg`).
    Milligram,
    /// Metric tonnes of 1000 kg (`t`).
    Tonne,
    /// Litres (`L`).
    Litre,
    /// Millilitres (`mL`).
    Millilitre,
    /// Counted items: tablets, capsules, containers (`{count}`).
    Count,
}

impl Unit {
    /// The UCUM code the schema carries.
    ///
    /// ```
    /// use enlace::payloads::Unit;
    ///
    /// assert_eq!(Unit::Millilitre.ucum(), "mL");
    /// assert_eq!(Unit::Count.ucum(), "{count}");
    /// ```
    pub fn ucum(self) -> &'static str {
        match self {
            Unit::Kilogram => "kg",
            Unit::Gram => "g",
            Unit::Milligram => "mg",
            Unit::Tonne => "t",
            Unit::Litre => "L",
            Unit::Millilitre => "mL",
            Unit::Count => "{count}",
        }
    }
}

/// An amount with its unit: `Quantity::kilograms(1200.0)`, `Quantity::new(60.0, Unit::Milligram)`.
///
/// ```
/// use enlace::payloads::{Quantity, Unit};
///
/// let q = Quantity::kilograms(1200.0).estimated();
/// let pb = q.to_pb();
/// assert_eq!((pb.value.as_str(), pb.unit.as_str(), pb.estimated), ("1200", "kg", true));
/// assert_eq!(Quantity::new(0.5, Unit::Litre).to_pb().value, "0.5");
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantity {
    value: f64,
    unit: Unit,
    estimated: bool,
}

impl Quantity {
    /// An amount of `value` `unit`s (a finite, non-negative number; anything else becomes 0).
    ///
    /// ```
    /// use enlace::payloads::{Quantity, Unit};
    ///
    /// assert_eq!(Quantity::new(60.0, Unit::Milligram).to_pb().unit, "mg");
    /// assert_eq!(Quantity::new(-1.0, Unit::Gram).to_pb().value, "0");
    /// ```
    pub fn new(value: f64, unit: Unit) -> Quantity {
        let value = if value.is_finite() && value >= 0.0 {
            value
        } else {
            0.0
        };
        Quantity {
            value,
            unit,
            estimated: false,
        }
    }

    /// A mass in kilograms: `Quantity::new(value, Unit::Kilogram)`.
    ///
    /// ```
    /// let q = enlace::payloads::Quantity::kilograms(1200.0).to_pb();
    /// assert_eq!((q.value.as_str(), q.unit.as_str()), ("1200", "kg"));
    /// ```
    pub fn kilograms(value: f64) -> Quantity {
        Quantity::new(value, Unit::Kilogram)
    }

    /// A volume in litres: `Quantity::new(value, Unit::Litre)`.
    ///
    /// ```
    /// let q = enlace::payloads::Quantity::litres(208.5).to_pb();
    /// assert_eq!((q.value.as_str(), q.unit.as_str()), ("208.5", "L"));
    /// ```
    pub fn litres(value: f64) -> Quantity {
        Quantity::new(value, Unit::Litre)
    }

    /// A count of items (tablets, containers).
    ///
    /// ```
    /// let q = enlace::payloads::Quantity::items(48_000).to_pb();
    /// assert_eq!((q.value.as_str(), q.unit.as_str()), ("48000", "{count}"));
    /// ```
    pub fn items(count: u64) -> Quantity {
        Quantity::new(count as f64, Unit::Count)
    }

    /// Marks the amount as an estimate, not a weighed or counted figure.
    ///
    /// ```
    /// let q = enlace::payloads::Quantity::kilograms(500.0).estimated();
    /// assert!(q.to_pb().estimated);
    /// ```
    pub fn estimated(mut self) -> Quantity {
        self.estimated = true;
        self
    }

    /// The schema's form: a decimal string and a UCUM unit.
    ///
    /// ```
    /// let q = enlace::payloads::Quantity::kilograms(0.25).to_pb();
    /// assert_eq!((q.value.as_str(), q.unit.as_str(), q.estimated), ("0.25", "kg", false));
    /// ```
    pub fn to_pb(&self) -> pb::Quantity {
        pb::Quantity {
            value: format!("{}", self.value),
            unit: self.unit.ucum().to_owned(),
            estimated: self.estimated,
        }
    }
}

/// A place where goods enter or leave, by UN/LOCODE.
///
/// ```
/// use enlace::payloads::seaport;
///
/// let entry = seaport("MXZLO".parse().unwrap(), "Manzanillo");
/// assert_eq!((entry.country.as_str(), entry.unlocode.as_str()), ("MX", "MXZLO"));
/// ```
pub fn seaport(code: UnLocode, name: &str) -> pb::Location {
    pb::Location {
        kind: pb::LocationKind::Seaport as i32,
        name: name.to_owned(),
        country: code.country().to_owned(),
        unlocode: code.0,
        ..Default::default()
    }
}

/// One chemical of a precursor alert.
///
/// ```
/// use enlace::payloads::{Chemical, Quantity};
///
/// let c = Chemical::new("Pseudoephedrine hydrochloride")
///     .labelled("Vitamin C")
///     .cas("345-78-8".parse().unwrap())
///     .quantity(Quantity::kilograms(1200.0));
/// assert_eq!(c.build().name_as_labelled, "Vitamin C");
/// ```
#[derive(Debug, Clone)]
pub struct Chemical(pb::ChemicalLine);

impl Chemical {
    /// A chemical by its controlled name (also its name as labelled, unless
    /// [`Chemical::labelled`] says otherwise).
    ///
    /// ```
    /// let line = enlace::payloads::Chemical::new("pseudoephedrine").build();
    /// assert_eq!(line.controlled_substance_name, "pseudoephedrine");
    /// assert_eq!(line.name_as_labelled, "pseudoephedrine");
    /// ```
    pub fn new(controlled_name: &str) -> Chemical {
        Chemical(pb::ChemicalLine {
            name_as_labelled: controlled_name.to_owned(),
            controlled_substance_name: controlled_name.to_owned(),
            ..Default::default()
        })
    }

    /// The name exactly as on the label or documents.
    ///
    /// ```
    /// let line = enlace::payloads::Chemical::new("pseudoephedrine")
    ///     .labelled("Pseudoefedrina HCl 60 mg")
    ///     .build();
    /// assert_eq!(line.name_as_labelled, "Pseudoefedrina HCl 60 mg");
    /// ```
    pub fn labelled(mut self, name: &str) -> Chemical {
        self.0.name_as_labelled = name.to_owned();
        self
    }

    /// The chemical's CAS Registry Number, checked when it was parsed.
    ///
    /// ```
    /// use enlace::payloads::Chemical;
    ///
    /// let line = Chemical::new("pseudoephedrine").cas("90-82-4".parse().unwrap()).build();
    /// assert_eq!(line.cas_number, "90-82-4");
    /// ```
    pub fn cas(mut self, cas: CasNumber) -> Chemical {
        self.0.cas_number = cas.0;
        self
    }

    /// The net quantity declared or found (weight, volume or count).
    ///
    /// ```
    /// use enlace::payloads::{Chemical, Quantity};
    ///
    /// let line = Chemical::new("acetone").quantity(Quantity::litres(800.0)).build();
    /// assert_eq!(line.quantity.unwrap().unit, "L");
    /// ```
    pub fn quantity(mut self, q: Quantity) -> Chemical {
        self.0.quantity = Some(q.to_pb());
        self
    }

    /// The quantity of the controlled substance in its base (anhydrous, salt-free) form, as DEA
    /// Form 486 requires.
    ///
    /// ```
    /// use enlace::payloads::{Chemical, Quantity};
    ///
    /// let line = Chemical::new("pseudoephedrine hydrochloride")
    ///     .quantity(Quantity::kilograms(1200.0))
    ///     .base_quantity(Quantity::kilograms(983.0).estimated())
    ///     .build();
    /// assert!(line.base_quantity.unwrap().estimated);
    /// ```
    pub fn base_quantity(mut self, q: Quantity) -> Chemical {
        self.0.base_quantity = Some(q.to_pb());
        self
    }

    /// The physical form in which it travels: powder, liquid, tablets...
    ///
    /// ```
    /// use enlace::payloads::Chemical;
    /// use enlace::pb;
    ///
    /// let line = Chemical::new("pseudoephedrine").form(pb::ChemicalForm::Tablet).build();
    /// assert_eq!(line.form(), pb::ChemicalForm::Tablet);
    /// ```
    pub fn form(mut self, form: pb::ChemicalForm) -> Chemical {
        self.0.form = form as i32;
        self
    }

    /// The protobuf line, to set what the builder does not cover.
    ///
    /// ```
    /// let mut line = enlace::payloads::Chemical::new("pseudoephedrine").build();
    /// line.hs_code = "2939.42".into();
    /// ```
    pub fn build(self) -> pb::ChemicalLine {
        self.0
    }
}

/// Builds a [`pb::PrecursorChemicalAlert`], ready to become a [`Draft`].
///
/// ```
/// use std::time::Duration;
/// use enlace::payloads::{Chemical, PrecursorAlert, Quantity, seaport, text};
/// use enlace::{Precedence, pb};
///
/// let draft = PrecursorAlert::new(pb::PrecursorAlertKind::SuspiciousShipment)
///     .chemical(
///         Chemical::new("Pseudoephedrine hydrochloride")
///             .cas("345-78-8".parse().unwrap())
///             .quantity(Quantity::kilograms(1200.0)),
///     )
///     .vessel(
///         "MSC Example",
///         seaport("CNSHA".parse().unwrap(), "Shanghai"),
///         seaport("MXZLO".parse().unwrap(), "Manzanillo"),
///     )
///     .action(pb::PrecursorRequestedAction::Intercept)
///     .narrative(text("en", "Diverted load declared as vitamin C, arriving in 3 days."))
///     .into_draft()
///     .to("pgr")
///     .precedence(Precedence::Flash)
///     .expires_in(Duration::from_secs(6 * 3600));
/// assert_eq!(draft.payload_type(), "enlace.v1.PrecursorChemicalAlert");
/// ```
#[derive(Debug, Clone)]
pub struct PrecursorAlert(pb::PrecursorChemicalAlert);

impl PrecursorAlert {
    /// An alert of the given kind (a pre-export notification, a suspicious, stopped or
    /// suspended shipment, a seizure...), with nothing else set yet.
    ///
    /// ```
    /// use enlace::payloads::PrecursorAlert;
    /// use enlace::pb;
    ///
    /// let alert = PrecursorAlert::new(pb::PrecursorAlertKind::Seizure).build();
    /// assert_eq!(alert.kind(), pb::PrecursorAlertKind::Seizure);
    /// ```
    pub fn new(kind: pb::PrecursorAlertKind) -> PrecursorAlert {
        PrecursorAlert(pb::PrecursorChemicalAlert {
            kind: kind as i32,
            ..Default::default()
        })
    }

    /// Adds a chemical line (one per substance and form).
    ///
    /// ```
    /// use enlace::payloads::{Chemical, PrecursorAlert};
    /// use enlace::pb;
    ///
    /// let alert = PrecursorAlert::new(pb::PrecursorAlertKind::SuspiciousShipment)
    ///     .chemical(Chemical::new("pseudoephedrine"))
    ///     .chemical(Chemical::new("ephedrine"))
    ///     .build();
    /// assert_eq!(alert.chemicals.len(), 2);
    /// ```
    pub fn chemical(mut self, c: Chemical) -> PrecursorAlert {
        self.0.chemicals.push(c.0);
        self
    }

    /// Sets a sea shipment: vessel, port of loading and expected point of entry.
    ///
    /// ```
    /// use enlace::payloads::{PrecursorAlert, seaport};
    /// use enlace::pb;
    ///
    /// let alert = PrecursorAlert::new(pb::PrecursorAlertKind::SuspiciousShipment)
    ///     .vessel(
    ///         "MSC Example",
    ///         seaport("CNSHA".parse().unwrap(), "Shanghai"),
    ///         seaport("MXZLO".parse().unwrap(), "Manzanillo"),
    ///     )
    ///     .build();
    /// assert_eq!(alert.shipment.unwrap().transport_mode(), pb::TransportMode::Sea);
    /// ```
    pub fn vessel(
        mut self,
        vessel: &str,
        from: pb::Location,
        entry: pb::Location,
    ) -> PrecursorAlert {
        let s = self.0.shipment.get_or_insert_with(Default::default);
        s.transport_mode = pb::TransportMode::Sea as i32;
        s.vessel_name = vessel.to_owned();
        s.port_of_loading = Some(from);
        s.expected_point_of_entry = Some(entry);
        self
    }

    /// Adds a party (exporter, importer, consignee...) and its country (ISO 3166-1 alpha-2).
    ///
    /// ```
    /// use enlace::payloads::PrecursorAlert;
    /// use enlace::pb;
    ///
    /// let alert = PrecursorAlert::new(pb::PrecursorAlertKind::PreExportNotification)
    ///     .party(pb::PartyRole::Exporter, "Example Chemical Co.", "IN")
    ///     .party(pb::PartyRole::Importer, "Importadora Ejemplo S.A. de C.V.", "MX")
    ///     .build();
    /// assert_eq!(alert.parties[1].country, "MX");
    /// ```
    pub fn party(mut self, role: pb::PartyRole, name: &str, country: &str) -> PrecursorAlert {
        self.0.parties.push(pb::Party {
            role: role as i32,
            name: name.to_owned(),
            country: country.to_owned(),
            ..Default::default()
        });
        self
    }

    /// Adds an external reference: a record in another system, e.g. a PEN Online notification.
    ///
    /// ```
    /// use enlace::payloads::PrecursorAlert;
    /// use enlace::pb;
    ///
    /// let alert = PrecursorAlert::new(pb::PrecursorAlertKind::PreExportNotification)
    ///     .reference("PEN Online", "PEN-2026-123456")
    ///     .build();
    /// assert_eq!(alert.external_references[0].system, "PEN Online");
    /// ```
    pub fn reference(mut self, system: &str, reference: &str) -> PrecursorAlert {
        self.0.external_references.push(pb::ExternalReference {
            system: system.to_owned(),
            reference: reference.to_owned(),
            description: String::new(),
        });
        self
    }

    /// What the sender asks the addressees to do: intercept, verify legitimacy, consult before
    /// acting, or nothing (information only).
    ///
    /// ```
    /// use enlace::payloads::PrecursorAlert;
    /// use enlace::pb;
    ///
    /// let alert = PrecursorAlert::new(pb::PrecursorAlertKind::SuspiciousShipment)
    ///     .action(pb::PrecursorRequestedAction::Intercept)
    ///     .build();
    /// assert_eq!(alert.requested_action(), pb::PrecursorRequestedAction::Intercept);
    /// ```
    pub fn action(mut self, action: pb::PrecursorRequestedAction) -> PrecursorAlert {
        self.0.requested_action = action as i32;
        self
    }

    /// The sender's account of the facts, in words (see [`text`]).
    ///
    /// ```
    /// use enlace::payloads::{PrecursorAlert, text};
    /// use enlace::pb;
    ///
    /// let alert = PrecursorAlert::new(pb::PrecursorAlertKind::SuspiciousShipment)
    ///     .narrative(text("en", "Load declared as vitamin C; consignee unknown at its address."))
    ///     .build();
    /// assert_eq!(alert.narrative.unwrap().language, "en");
    /// ```
    pub fn narrative(mut self, t: pb::LocalizedText) -> PrecursorAlert {
        self.0.narrative = Some(t);
        self
    }

    /// The protobuf alert, to set what the builder does not cover.
    ///
    /// ```
    /// use enlace::payloads::PrecursorAlert;
    /// use enlace::{Draft, pb};
    ///
    /// let mut alert = PrecursorAlert::new(pb::PrecursorAlertKind::IllicitLaboratory).build();
    /// alert.laboratory = Some(pb::IllicitLaboratory { active: true, ..Default::default() });
    /// let draft = Draft::from(alert).to("pgr");
    /// # let _ = draft;
    /// ```
    pub fn build(self) -> pb::PrecursorChemicalAlert {
        self.0
    }

    /// A draft carrying this alert, to address and send.
    ///
    /// ```
    /// use enlace::payloads::PrecursorAlert;
    /// use enlace::{Precedence, pb};
    ///
    /// let draft = PrecursorAlert::new(pb::PrecursorAlertKind::SuspiciousShipment)
    ///     .into_draft()
    ///     .to("pgr")
    ///     .precedence(Precedence::Flash);
    /// assert_eq!(draft.payload_type(), "enlace.v1.PrecursorChemicalAlert");
    /// ```
    pub fn into_draft(self) -> Draft {
        Draft::from(self)
    }
}

impl From<PrecursorAlert> for Draft {
    fn from(a: PrecursorAlert) -> Draft {
        Draft::new(&a.0)
    }
}

/// An opaque document or file (a scanned manifest, a photograph, a PDF), with its media type,
/// name and SHA-256, ready to become a [`Draft`].
///
/// ```
/// use enlace::payloads::Document;
///
/// let doc = Document::new("manifest.pdf", "application/pdf", b"%PDF-1.7 ...".to_vec())
///     .description(enlace::payloads::text("en", "Bill of lading, MSC Example"));
/// let draft = doc.clone().into_draft().to("pgr");
/// assert_eq!(draft.payload_type(), "enlace.v1.Document");
/// assert!(Document::verify(&doc.build()).is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct Document(pb::Document);

/// A received document whose content does not match its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {file_name:?}: its content does not match its SHA-256")]
pub struct DocumentMismatch {
    /// The document's file name, as its sender gave it.
    pub file_name: String,
}

impl Document {
    /// A document of `media_type` named `file_name` (directories are stripped) holding
    /// `content`; its SHA-256 is computed here.
    ///
    /// ```
    /// use enlace::payloads::Document;
    ///
    /// let doc = Document::new("/scans/manifest.pdf", "application/pdf", vec![0x25, 0x50]).build();
    /// assert_eq!(doc.file_name, "manifest.pdf");
    /// assert_eq!(doc.sha256.len(), 32);
    /// ```
    pub fn new(file_name: &str, media_type: &str, content: Vec<u8>) -> Document {
        let name = file_name
            .rsplit(['/', '\\'])
            .next()
            .unwrap_or(file_name)
            .to_owned();
        let sha = ring::digest::digest(&ring::digest::SHA256, &content);
        Document(pb::Document {
            media_type: media_type.to_owned(),
            file_name: name,
            sha256: bytes::Bytes::copy_from_slice(sha.as_ref()),
            content: content.into(),
            description: None,
        })
    }

    /// What the document is, in words (see [`text`]).
    ///
    /// ```
    /// use enlace::payloads::{Document, text};
    ///
    /// let doc = Document::new("photo.jpg", "image/jpeg", vec![0xff, 0xd8])
    ///     .description(text("es-MX", "Fotografía de los tambos en el muelle"))
    ///     .build();
    /// assert!(doc.description.is_some());
    /// ```
    pub fn description(mut self, t: pb::LocalizedText) -> Document {
        self.0.description = Some(t);
        self
    }

    /// The protobuf document, e.g. to embed it in another payload.
    ///
    /// ```
    /// let doc = enlace::payloads::Document::new("a.txt", "text/plain", b"hi".to_vec()).build();
    /// assert_eq!(doc.media_type, "text/plain");
    /// ```
    pub fn build(self) -> pb::Document {
        self.0
    }

    /// A draft carrying this document, to address and send.
    ///
    /// ```
    /// let draft = enlace::payloads::Document::new("a.txt", "text/plain", b"hi".to_vec())
    ///     .into_draft()
    ///     .to("pgr");
    /// assert_eq!(draft.payload_type(), "enlace.v1.Document");
    /// ```
    pub fn into_draft(self) -> Draft {
        Draft::from(self)
    }

    /// Checks a received document's content against its SHA-256.
    ///
    /// ```no_run
    /// # fn example(delivery: &enlace::Delivery) -> Result<(), Box<dyn std::error::Error>> {
    /// let doc: enlace::pb::Document = delivery.payload()?;
    /// enlace::payloads::Document::verify(&doc)?;
    /// std::fs::write(&doc.file_name, &doc.content)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`DocumentMismatch`] when they differ.
    pub fn verify(d: &pb::Document) -> Result<(), DocumentMismatch> {
        let sha = ring::digest::digest(&ring::digest::SHA256, &d.content);
        if sha.as_ref() == d.sha256.as_ref() {
            Ok(())
        } else {
            Err(DocumentMismatch {
                file_name: d.file_name.clone(),
            })
        }
    }
}

impl From<Document> for Draft {
    fn from(d: Document) -> Draft {
        Draft::new(&d.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_numbers_are_checked() {
        for ok in ["345-78-8", "90-82-4", "7732-18-5", "50-00-0"] {
            assert!(ok.parse::<CasNumber>().is_ok(), "{ok}");
        }
        for bad in [
            "345-78-7",
            "3-78-8",
            "345-7-8",
            "345788",
            "a45-78-8",
            "12345678-00-0",
        ] {
            assert!(bad.parse::<CasNumber>().is_err(), "{bad}");
        }
    }

    #[test]
    fn documents_carry_their_hash() {
        let d = Document::new("/tmp/a/b/photo.jpg", "image/jpeg", vec![1, 2, 3]).build();
        assert_eq!(d.file_name, "photo.jpg");
        assert!(Document::verify(&d).is_ok());
        let mut tampered = d.clone();
        tampered.content = vec![1, 2, 4].into();
        assert!(Document::verify(&tampered).is_err());
    }
}
