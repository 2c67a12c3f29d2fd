//! Typed builders for payloads, so that a precursor alert takes a few lines of Rust.
//!
//! The generated protobuf structs are complete but verbose; these helpers fill the common fields
//! and leave everything else reachable (`.build()` returns the plain struct to extend).

use crate::wire::pb;

/// Free text in a language (BCP-47 tag), without translations.
pub fn text(language: &str, text: &str) -> pb::LocalizedText {
    pb::LocalizedText {
        language: language.to_owned(),
        text: text.to_owned(),
        translations: Vec::new(),
    }
}

/// A quantity such as ("1200", "kg").
pub fn quantity(value: &str, unit: &str) -> pb::Quantity {
    pb::Quantity {
        value: value.to_owned(),
        unit: unit.to_owned(),
        estimated: false,
    }
}

/// A seaport by UN/LOCODE, e.g. `seaport("MXZLO", "Manzanillo", "MX")`.
pub fn seaport(unlocode: &str, name: &str, country: &str) -> pb::Location {
    pb::Location {
        kind: pb::LocationKind::Seaport as i32,
        name: name.to_owned(),
        country: country.to_owned(),
        unlocode: unlocode.to_owned(),
        ..Default::default()
    }
}

/// Builds a [`pb::PrecursorChemicalAlert`].
///
/// ```
/// use enlace::payloads::{PrecursorAlert, quantity, seaport, text};
/// use enlace::wire::pb;
///
/// let alert = PrecursorAlert::new(pb::PrecursorAlertKind::SuspiciousShipment)
///     .chemical("Pseudoephedrine hydrochloride", "345-78-8", quantity("1200", "kg"))
///     .vessel("MSC Example", seaport("CNSHA", "Shanghai", "CN"), seaport("MXZLO", "Manzanillo", "MX"))
///     .action(pb::PrecursorRequestedAction::Intercept)
///     .narrative(text("en", "Diverted load declared as vitamin C, arriving in 3 days."))
///     .build();
/// assert_eq!(alert.chemicals.len(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct PrecursorAlert(pb::PrecursorChemicalAlert);

impl PrecursorAlert {
    pub fn new(kind: pb::PrecursorAlertKind) -> PrecursorAlert {
        PrecursorAlert(pb::PrecursorChemicalAlert {
            kind: kind as i32,
            ..Default::default()
        })
    }

    /// Adds a chemical line: name as labelled (also the controlled name), CAS number, quantity.
    pub fn chemical(mut self, name: &str, cas: &str, qty: pb::Quantity) -> PrecursorAlert {
        self.0.chemicals.push(pb::ChemicalLine {
            name_as_labelled: name.to_owned(),
            controlled_substance_name: name.to_owned(),
            cas_number: cas.to_owned(),
            quantity: Some(qty),
            ..Default::default()
        });
        self
    }

    /// Sets a sea shipment: vessel, port of loading and expected point of entry.
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

    /// Adds a party (exporter, importer, consignee...).
    pub fn party(mut self, role: pb::PartyRole, name: &str, country: &str) -> PrecursorAlert {
        self.0.parties.push(pb::Party {
            role: role as i32,
            name: name.to_owned(),
            country: country.to_owned(),
            ..Default::default()
        });
        self
    }

    /// Adds an external reference, e.g. ("PEN Online", "PEN-2026-123456").
    pub fn reference(mut self, system: &str, reference: &str) -> PrecursorAlert {
        self.0.external_references.push(pb::ExternalReference {
            system: system.to_owned(),
            reference: reference.to_owned(),
            description: String::new(),
        });
        self
    }

    pub fn action(mut self, action: pb::PrecursorRequestedAction) -> PrecursorAlert {
        self.0.requested_action = action as i32;
        self
    }

    pub fn narrative(mut self, t: pb::LocalizedText) -> PrecursorAlert {
        self.0.narrative = Some(t);
        self
    }

    pub fn build(self) -> pb::PrecursorChemicalAlert {
        self.0
    }
}
