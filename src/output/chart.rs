//! Charts of `report`: an SVG line chart of weekly unique users, and terminal sparklines.

use crate::aggregate::period::{Period, PeriodKind};
use crate::aggregate::MetricRow;
use crate::classify::{is_deploy_token_metric, metric_names, short_name, ActorKind, TrackedEvent};
use chrono::NaiveDate;
use plotters::prelude::*;

/// Width and height of the chart, in pixels: readable at 800 px wide.
pub const CHART_SIZE: (u32, u32) = (800, 450);

/// One color per users' line, in [`metric_names`] order: distinct in print and for the
/// common forms of color blindness (Okabe and Ito's palette), the total in black. A deploy
/// tokens' line has its event's color, lighter and thinner.
const COLORS: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(0, 0, 0),
];

/// The color and width of a metric's line.
fn style_of(metric: &str) -> (RGBColor, u32) {
    let event = TrackedEvent::ALL.iter().find(|t| t.metric_name() == metric);
    let Some(event) = event else {
        return (COLORS[5], 3);
    };
    let color = COLORS[event.by(ActorKind::User).index() / 2];
    match event.actor() {
        ActorKind::User => (color, 2),
        ActorKind::DeployToken => {
            let lighter = |c: u8| c + (255 - c) / 2;
            (
                RGBColor(lighter(color.0), lighter(color.1), lighter(color.2)),
                1,
            )
        }
    }
}

/// The weeks that start in `since..until` (all when unbounded), and per metric its weekly
/// unique users over them, zero where a week has no row: the users' metrics and their total
/// always, a deploy tokens' metric when it has a user in one of the weeks.
pub fn weekly_users(
    rows: &[MetricRow],
    since: Option<NaiveDate>,
    until: Option<NaiveDate>,
) -> (Vec<Period>, Vec<(&'static str, Vec<i64>)>) {
    let in_range = |p: &Period| {
        p.kind == PeriodKind::Week
            && since.is_none_or(|s| p.start >= s)
            && until.is_none_or(|u| p.start < u)
    };
    let mut weeks: Vec<Period> = rows.iter().map(|r| r.period).filter(in_range).collect();
    weeks.sort();
    weeks.dedup();
    let series = metric_names()
        .map(|metric| {
            let values = weeks
                .iter()
                .map(|w| {
                    rows.iter()
                        .find(|r| r.metric == metric && r.period == *w)
                        .map_or(0, |r| r.unique_users)
                })
                .collect();
            (metric, values)
        })
        .filter(|(metric, values): &(&str, Vec<i64>)| {
            !is_deploy_token_metric(metric) || values.iter().any(|&v| v > 0)
        })
        .collect();
    (weeks, series)
}

/// A self-contained SVG line chart of weekly unique users per tracked event and the total:
/// weeks (by their Monday) across, users up, a legend.
pub fn weekly_chart(
    rows: &[MetricRow],
    since: Option<NaiveDate>,
    until: Option<NaiveDate>,
) -> anyhow::Result<String> {
    let (weeks, series) = weekly_users(rows, since, until);
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .max()
        .unwrap_or(0);
    // Headroom above the highest line for the legend.
    let y_max = ((top as f64 * 1.45).ceil() as i64).max(top + 1);
    let last = weeks.len().saturating_sub(1).max(1) as i32;
    let label = |i: &i32| {
        weeks
            .get(*i as usize)
            .map_or(String::new(), |w| w.start.to_string())
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let title = match weeks.first().zip(weeks.last()) {
            Some((a, b)) => format!("Weekly unique users, {a} to {b}"),
            None => "Weekly unique users (no week in range)".to_owned(),
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .margin_right(48)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(0..last, 0..y_max)?;
        chart
            .configure_mesh()
            .x_labels(weeks.len().clamp(2, 8))
            .x_label_formatter(&label)
            .y_labels(8)
            .x_desc("ISO week, by its Monday (UTC)")
            .y_desc("unique users")
            .label_style(("sans-serif", 13))
            .draw()?;
        // In metric_names order: the total last, on top.
        for (metric, values) in &series {
            let (color, width) = style_of(metric);
            let points = values.iter().enumerate().map(|(i, v)| (i as i32, *v));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(width)))?
                .label(short_name(metric))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

/// The values as a Unicode sparkline, one block a value, scaled to the largest: `▁▃█▅`.
pub fn sparkline(values: &[i64]) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let top = values.iter().copied().max().unwrap_or(0).max(1);
    values
        .iter()
        .map(|&v| {
            let level = (v.max(0) as f64 / top as f64 * 7.0).round() as usize;
            BLOCKS[level.min(7)]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_to_the_largest_value() {
        assert_eq!(sparkline(&[0, 1, 2, 4, 8]), "▁▂▃▅█");
        assert_eq!(sparkline(&[0, 0]), "▁▁");
        assert_eq!(sparkline(&[]), "");
        assert_eq!(sparkline(&[5]), "█");
    }
}
