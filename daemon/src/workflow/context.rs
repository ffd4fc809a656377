//! Rendering glue: what templates and conditions see of an event and a
//! delivery, and the [`Workflow`] methods that evaluate conditions and
//! render templates with it (within the budgets of `render`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{
    CONDITION_FUEL, OUTPUT_LIMIT, RENDER_FUEL, Workflow, WorkflowError, condition,
    minijinja_message, render,
};
use crate::model::Event;

/// What templates and conditions see.
pub struct RenderContext<'a> {
    pub event: &'a Event,
    pub case_id: &'a str,
    pub case_started_at: DateTime<Utc>,
    pub step: &'a str,
    pub channel: &'a str,
    /// The customer's signed link out of this channel (with `webhooks:`
    /// configured; otherwise templates cannot use `unsubscribe_url`).
    pub unsubscribe_url: Option<&'a str>,
}

/// The variables templates and conditions see, serialized straight from the
/// event (no intermediate JSON copy: this runs once per delivery).
#[derive(serde::Serialize)]
struct ContextRef<'a> {
    customer: &'a crate::model::Customer,
    subject: &'a str,
    data: &'a serde_json::Value,
    event: EventRef<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    case: Option<CaseRef<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unsubscribe_url: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct EventRef<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    occurred_at: Option<DateTime<Utc>>,
}

#[derive(serde::Serialize)]
struct CaseRef<'a> {
    id: &'a str,
    started_at: DateTime<Utc>,
}

static EMPTY_DATA: std::sync::LazyLock<serde_json::Value> =
    std::sync::LazyLock::new(|| serde_json::Value::Object(serde_json::Map::new()));

fn context_value(event: &Event, extra: Option<&RenderContext<'_>>) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(ContextRef {
        customer: &event.customer,
        subject: &event.subject,
        // A missing `data` is an empty object, so `data.x` is undefined
        // rather than an error about null.
        data: if event.data.is_null() {
            &EMPTY_DATA
        } else {
            &event.data
        },
        event: EventRef {
            id: &event.id,
            event_type: &event.event_type,
            occurred_at: event.occurred_at,
        },
        case: extra.map(|extra| CaseRef {
            id: extra.case_id,
            started_at: extra.case_started_at,
        }),
        step: extra.map(|extra| extra.step),
        channel: extra.map(|extra| extra.channel),
        unsubscribe_url: extra.and_then(|extra| extra.unsubscribe_url),
    }))
}

impl Workflow {
    /// Does this event start a case of this workflow?
    pub fn triggers_on(&self, event: &Event) -> Result<bool, WorkflowError> {
        if event.event_type != self.trigger.event {
            return Ok(false);
        }
        match &self.trigger.when {
            None => Ok(true),
            Some(when) => self.holds(when, event),
        }
    }

    /// Evaluates a condition of this workflow (comparisons typed, within a
    /// condition's budget) for an event.
    fn holds(&self, when: &str, event: &Event) -> Result<bool, WorkflowError> {
        let condition_error = |e: minijinja::Error| WorkflowError::Condition {
            condition: when.to_string(),
            message: if render::is_out_of_fuel(&e) {
                format!("evaluation exceeded its budget of {CONDITION_FUEL} instructions")
            } else {
                minijinja_message(&e)
            },
        };
        // Every condition was checked and recorded when the file was parsed.
        let typed = match self.conditions.get(when) {
            Some(typed) => typed.clone(),
            None => condition::typed(when).map_err(condition_error)?,
        };
        let expr = self
            .conditions_env
            .compile_expression(&typed)
            .map_err(condition_error)?;
        let value = expr
            .eval(context_value(event, None))
            .map_err(condition_error)?;
        Ok(value.is_true())
    }

    pub fn is_exit_event(&self, event_type: &str) -> bool {
        self.exit_on.iter().any(|t| t == event_type)
    }

    /// Renders every field of a template for one delivery, each field within
    /// [`RENDER_FUEL`] and the whole message within [`OUTPUT_LIMIT`] bytes.
    pub fn render(
        &self,
        template: &str,
        ctx: &RenderContext<'_>,
    ) -> Result<BTreeMap<String, String>, WorkflowError> {
        let fields =
            self.templates
                .get(template)
                .ok_or_else(|| WorkflowError::UnknownTemplate {
                    template: template.to_string(),
                })?;
        let value = context_value(ctx.event, Some(ctx));
        let mut out = BTreeMap::new();
        let mut left = OUTPUT_LIMIT;
        for field in fields {
            let render_error = |e: minijinja::Error| WorkflowError::Render {
                template: template.to_string(),
                field: field.clone(),
                message: minijinja_message(&e),
            };
            let compiled = self
                .env
                .get_template(&format!("{template}.{field}"))
                .map_err(render_error)?;
            let text =
                render::render_capped(&compiled, &value, &mut left).map_err(|e| match e {
                    render::Bounded::Budget => WorkflowError::RenderBudget {
                        template: template.to_string(),
                        field: field.clone(),
                        fuel: RENDER_FUEL,
                    },
                    render::Bounded::Output => WorkflowError::RenderOutput {
                        template: template.to_string(),
                        field: field.clone(),
                        limit: OUTPUT_LIMIT,
                    },
                    render::Bounded::Other(e) => render_error(e),
                })?;
            out.insert(field.clone(), text);
        }
        Ok(out)
    }

    /// Does step `step`'s `when` condition hold for this case's trigger
    /// event? (True for a step without one.)
    pub fn step_applies(&self, step: usize, event: &Event) -> Result<bool, WorkflowError> {
        match self.steps.get(step).and_then(|s| s.when.as_ref()) {
            None => Ok(true),
            Some(when) => self.holds(when, event),
        }
    }
}
